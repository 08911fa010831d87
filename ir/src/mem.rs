//! Resident-memory hints for tensor data mapped from a model file.

/// Asks the kernel to page out the pages of `data` that lie wholly inside it (Linux; 1 MiB or
/// more), so that a copy the caller has made, or data already written elsewhere, does not stay
/// resident twice. The data stays valid: file-backed pages are read back on the next access.
/// MADV_PAGEOUT never discards data; on heap memory without swap it does nothing.
pub fn release_pages(data: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        if data.len() < (1 << 20) {
            return;
        }
        let start = data.as_ptr() as usize;
        let aligned = start.div_ceil(PAGE) * PAGE;
        let end = (start + data.len()) / PAGE * PAGE;
        if end > aligned {
            // SAFETY: the range lies inside memory `data` keeps alive; PAGEOUT is advisory.
            unsafe {
                libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_PAGEOUT);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = data;
}

/// Returns the allocator's free memory to the system (glibc: `malloc_trim`). Work that frees
/// many large, differently sized buffers (one K x K Hessian per layer input) otherwise leaves
/// them to the allocator's arenas, and the process's resident size grows with the work done
/// rather than with what it holds. A no-op elsewhere.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}
