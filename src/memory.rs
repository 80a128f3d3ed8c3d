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

/// Unmaps the pages of this program's own code and read-only data: a large pass runs code an idle
/// daemon never does (the first reconcile, the list parser, the writes of 100,000 rows), a
/// statement prepared again maps SQLite's parser, and the kernel leaves each page it faulted in
/// mapped (with its neighbours: 128 kB a fault here), so counted in the daemon's resident size, for
/// as long as memory lasts. Only mappings that cannot be written and hold no private copy of a page
/// (none relocated, none patched by a debugger, none swapped) are unmapped: each of their pages
/// equals the file's, so the next access maps it again from the OS's cache (or reads it from the
/// file), and nothing changes but where the page is counted. The pages stay in that cache, which
/// the kernel empties first when memory runs short.
pub(crate) fn release_code_pages() {
    #[cfg(target_os = "linux")]
    {
        // A debugger writes its breakpoints into private copies of code pages, which
        // MADV_DONTNEED would drop: not while one is attached (or when that cannot be read).
        let untraced = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            status
                .lines()
                .any(|line| line.split_whitespace().eq(["TracerPid:", "0"]))
        });
        if !untraced {
            return;
        }
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return;
        };
        let here = release_code_pages as *const () as usize;
        for range in clean_read_only_mappings_of_the_file_holding(&smaps, here) {
            // SAFETY: the range is a whole mapping of this process's own file, not writable
            // and without a private page when smaps was read (so without content that is not
            // the file's): MADV_DONTNEED only unmaps it, and the program reads the same bytes
            // at the next fault. The program never writes its own code; a private copy made
            // from outside since smaps was read (a debugger attached meanwhile, a uprobe set in
            // those microseconds) would be dropped, losing that breakpoint, not program data.
            unsafe {
                libc::madvise(
                    range.start as *mut libc::c_void,
                    range.end - range.start,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}

/// The address ranges in `smaps` (as /proc/self/smaps reads) that map the same file as the
/// mapping holding `address`, read-only and without private (anonymous or swapped) pages.
fn clean_read_only_mappings_of_the_file_holding(
    smaps: &str,
    address: usize,
) -> Vec<std::ops::Range<usize>> {
    let mappings = Mapping::all(smaps);
    let Some(file) = mappings.iter().find(|m| m.range.contains(&address)) else {
        return Vec::new();
    };
    mappings
        .iter()
        .filter(|m| (m.device, m.inode) == (file.device, file.inode))
        .filter(|m| !m.writable && m.private_kb == 0)
        .map(|m| m.range.clone())
        .collect()
}

/// A mapping of a file, from its /proc/self/smaps entry: the line `start-end perms offset
/// device inode path`, then fields such as `Anonymous: 0 kB`.
struct Mapping<'a> {
    range: std::ops::Range<usize>,
    writable: bool,
    device: &'a str,
    inode: u64,
    /// Anonymous and swapped pages: private copies that differ from the file.
    private_kb: u64,
}

impl<'a> Mapping<'a> {
    fn all(smaps: &'a str) -> Vec<Mapping<'a>> {
        let mut mappings: Vec<Mapping<'a>> = Vec::new();
        // Whether the fields being read are those of the last mapping kept (a mapping of no
        // file, such as the heap, is not kept, and its fields are not its predecessor's).
        let mut in_last = false;
        for line in smaps.lines() {
            if Mapping::range(line).is_some() {
                let mapping = Mapping::parse(line);
                in_last = mapping.is_some();
                mappings.extend(mapping);
            } else if let (true, Some((field, value))) = (in_last, line.split_once(':'))
                && matches!(field, "Anonymous" | "Swap")
                && let Some(last) = mappings.last_mut()
            {
                // A figure that does not read counts as private: such a mapping is kept.
                let kb = value.trim().trim_end_matches("kB").trim().parse::<u64>();
                last.private_kb += kb.unwrap_or(1);
            }
        }
        mappings
    }

    /// The address range a mapping's first line starts with.
    fn range(line: &str) -> Option<std::ops::Range<usize>> {
        let (start, end) = line.split_ascii_whitespace().next()?.split_once('-')?;
        Some(usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?)
    }

    /// The first line of a mapping of a file.
    fn parse(line: &'a str) -> Option<Mapping<'a>> {
        let range = Mapping::range(line)?;
        let mut fields = line.split_ascii_whitespace().skip(1);
        let perms = fields.next()?;
        let device = fields.nth(1)?;
        let inode = fields.next()?.parse().ok().filter(|&inode| inode != 0)?;
        Some(Mapping {
            range,
            writable: perms.contains('w'),
            device,
            inode,
            private_kb: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5581a0000000-5581a0534000 r--p 00000000 fe:01 1234 /usr/bin/mbg provision
Rss:                1200 kB
Anonymous:             0 kB
Swap:                  0 kB
5581a2000000-5581a3000000 rw-p 00000000 00:00 0 [heap]
Anonymous:         16000 kB
5581a0535000-5581a14cf000 r-xp 00534000 fe:01 1234 /usr/bin/mbg provision
Rss:               14000 kB
Anonymous:             0 kB
Swap:                  0 kB
5581a14cf000-5581a1545000 r--p 014cd000 fe:01 1234 /usr/bin/mbg provision
Rss:                 460 kB
Anonymous:           460 kB
Swap:                  0 kB
5581a1545000-5581a154b000 rw-p 01542000 fe:01 1234 /usr/bin/mbg provision
Anonymous:             0 kB
5581a154b000-5581a154c000 r--p 01548000 fe:01 1234 /usr/bin/mbg provision
Anonymous:             0 kB
Swap:                  4 kB
7f0000000000-7f0000028000 r--p 00000000 fe:01 5678 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f0000028000-7f000019d000 r-xp 00028000 fe:02 1234 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Anonymous:           132 kB
";

    /// The program's code and read-only data, and nothing else: not the relocated data (its
    /// pages are private copies), not a writable mapping, not a mapping with pages in swap, not
    /// the heap, not a library with the same inode number on another device.
    #[test]
    fn only_the_programs_clean_read_only_mappings_are_released() {
        let in_code = 0x5581a0600000;
        let found = clean_read_only_mappings_of_the_file_holding(SMAPS, in_code);
        assert_eq!(
            found,
            vec![
                0x5581a0000000..0x5581a0534000,
                0x5581a0535000..0x5581a14cf000
            ]
        );
        let heap = 0x5581a2000100;
        assert!(clean_read_only_mappings_of_the_file_holding(SMAPS, heap).is_empty());
        assert!(clean_read_only_mappings_of_the_file_holding(SMAPS, 0x1000).is_empty());
    }

    /// The resident pages of the mapping that holds `address`, in kB.
    #[cfg(target_os = "linux")]
    fn resident_kb_at(address: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some(mapping) = Mapping::parse(line) {
                inside = mapping.range.contains(&address);
            } else if inside && let Some(rss) = line.strip_prefix("Rss:") {
                return rss.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {address:#x}")
    }

    /// On this machine: the code that runs here is unmapped, found again at its next use,
    /// and the program goes on as before.
    #[cfg(target_os = "linux")]
    #[test]
    fn this_programs_code_is_released_and_runs_on() {
        let here = this_programs_code_is_released_and_runs_on as *const () as usize;
        let before = resident_kb_at(here);
        release_code_pages();
        let after = resident_kb_at(here);
        assert!(
            after < before,
            "{before} kB resident before, {after} kB after"
        );
        assert_eq!(
            clean_read_only_mappings_of_the_file_holding(SMAPS, 0x5581a0600000).len(),
            2,
            "and the code that reads smaps runs as before"
        );
    }
}
