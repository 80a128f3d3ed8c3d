//! Handing freed heap back to the system. A pass over 100,000 extensions briefly holds a few
//! hundred MB (the rows, the MBG's list, the plan); glibc keeps what was freed in its arenas, so
//! a daemon that is idle for hours would go on showing the pass's peak as resident memory.

/// Returns the free memory at the top of glibc's heaps to the system; a no-op elsewhere.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its own locks; it
    // frees nothing that is in use and may be called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Two malloc arenas instead of glibc's default of eight per core. Each thread that meets
/// contention gets an arena of its own, and memory freed in one cannot serve another, so a
/// daemon's resident size grows with its threads (tokio's, sqlx's); with two, an idle daemon
/// that has just reconciled 100,000 extensions went from 47 MB to 39 MB. Call it first thing.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt changes a tuning parameter of the allocator, under its own lock.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Asks the kernel to reclaim the pages of this program's own file that only this process
/// maps (`MADV_PAGEOUT`, Linux 5.4 and later): a large pass runs code an idle daemon does not
/// (the first reconcile, the list parser, the writes of 100,000 rows), and the kernel leaves
/// those pages mapped, so counted in the daemon's resident size, until memory runs short. Only a
/// hint: clean pages are dropped and read again from the file when next run, pages another
/// process also maps are left alone, and a kernel that does not know the advice refuses it.
pub(crate) fn release_code_pages() {
    #[cfg(target_os = "linux")]
    {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        for range in mappings_of_the_file_holding(&maps, release_code_pages as *const () as usize) {
            // SAFETY: MADV_PAGEOUT changes neither the content nor the protection of a mapping
            // (unlike MADV_DONTNEED, which would drop private copies such as relocated data);
            // the range is a whole mapping of this process as /proc/self/maps lists it.
            unsafe {
                libc::madvise(
                    range.start as *mut libc::c_void,
                    range.end - range.start,
                    libc::MADV_PAGEOUT,
                );
            }
        }
    }
}

/// The address ranges in `maps` (as /proc/self/maps reads) that map the same file as the
/// mapping holding `address`.
fn mappings_of_the_file_holding(maps: &str, address: usize) -> Vec<std::ops::Range<usize>> {
    let mappings: Vec<Mapping<'_>> = maps.lines().filter_map(Mapping::parse).collect();
    let Some(file) = mappings.iter().find(|m| m.range.contains(&address)) else {
        return Vec::new();
    };
    mappings
        .iter()
        .filter(|m| (m.device, m.inode) == (file.device, file.inode))
        .map(|m| m.range.clone())
        .collect()
}

/// A line of /proc/self/maps that maps a file: `start-end perms offset device inode path`.
struct Mapping<'a> {
    range: std::ops::Range<usize>,
    device: &'a str,
    inode: u64,
}

impl<'a> Mapping<'a> {
    fn parse(line: &'a str) -> Option<Mapping<'a>> {
        let mut fields = line.split_ascii_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let device = fields.nth(2)?;
        let inode = fields.next()?.parse().ok().filter(|&inode| inode != 0)?;
        Some(Mapping {
            range: usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?,
            device,
            inode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
5581a0000000-5581a0534000 r--p 00000000 fe:01 1234 /usr/bin/mbg-provision
5581a0535000-5581a14cf000 r-xp 00534000 fe:01 1234 /usr/bin/mbg-provision
5581a14cf000-5581a1545000 r--p 014cd000 fe:01 1234 /usr/bin/mbg-provision
5581a1545000-5581a154b000 rw-p 01542000 fe:01 1234 /usr/bin/mbg-provision
5581a2000000-5581a3000000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000028000 r--p 00000000 fe:01 5678 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000028000-7f000019d000 r-xp 00028000 fe:02 1234 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";

    /// Every mapping of the program's file, and nothing else: not the heap, not a library with
    /// the same inode number on another device, not an anonymous mapping.
    #[test]
    fn the_programs_own_mappings_are_found_from_an_address_in_its_code() {
        let in_code = 0x5581a0600000;
        let found = mappings_of_the_file_holding(MAPS, in_code);
        assert_eq!(
            found,
            vec![
                0x5581a0000000..0x5581a0534000,
                0x5581a0535000..0x5581a14cf000,
                0x5581a14cf000..0x5581a1545000,
                0x5581a1545000..0x5581a154b000,
            ]
        );
        assert!(
            mappings_of_the_file_holding(MAPS, 0x5581a2000100).is_empty(),
            "the heap"
        );
        assert!(
            mappings_of_the_file_holding(MAPS, 0x1000).is_empty(),
            "nothing there"
        );
    }

    /// On this machine: the mapping that holds this very function is found, and asking the
    /// kernel to reclaim it leaves the program running, its mappings unchanged.
    #[cfg(target_os = "linux")]
    #[test]
    fn this_programs_code_is_found_and_survives_being_paged_out() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let here = this_programs_code_is_found_and_survives_being_paged_out as *const () as usize;
        let found = mappings_of_the_file_holding(&maps, here);
        assert!(found.iter().any(|r| r.contains(&here)), "{maps}");
        release_code_pages();
        let after = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert_eq!(
            mappings_of_the_file_holding(&after, here),
            found,
            "the mappings stay as they were"
        );
    }
}
