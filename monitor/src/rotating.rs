//! A log file that rotates by size, so a busy host cannot fill its disk:
//! `PATH` is written, `PATH.1` ... `PATH.KEEP` hold older lines.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens `path` for appending; at `max_bytes` it becomes `path.1` and
    /// the oldest of `keep` rotated files is dropped.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> anyhow::Result<RotatingFile> {
        let file = append(path)?;
        let size = file
            .metadata()
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        Ok(RotatingFile {
            path: path.to_owned(),
            max_bytes,
            keep,
            file,
            size,
        })
    }

    /// Appends one line (a line is never split across files).
    pub fn write_line(&mut self, line: &str) -> anyhow::Result<()> {
        let length = line.len() as u64 + 1;
        if self.size > 0 && self.size + length > self.max_bytes {
            self.rotate()?;
        }
        let mut buffer = Vec::with_capacity(line.len() + 1);
        buffer.extend_from_slice(line.as_bytes());
        buffer.push(b'\n');
        self.file
            .write_all(&buffer)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.size += length;
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        if self.keep == 0 {
            self.file = File::create(&self.path)
                .with_context(|| format!("truncating {}", self.path.display()))?;
        } else {
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))
                        .with_context(|| format!("rotating {}", from.display()))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))
                .with_context(|| format!("rotating {}", self.path.display()))?;
            self.file = append(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_at_the_size_and_only_keep_are_kept() {
        let dir = std::env::temp_dir().join(format!("crossmon-rotating-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("flows.jsonl");
        // 10-byte lines (9 + newline), 25 bytes per file: two lines each.
        let mut file = RotatingFile::open(&path, 25, 2).expect("open");
        for i in 0..7 {
            file.write_line(&format!("line {i:04}")).expect("write");
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(read(&path), "line 0006\n");
        assert_eq!(read(&file.rotated(1)), "line 0004\nline 0005\n");
        assert_eq!(read(&file.rotated(2)), "line 0002\nline 0003\n");
        assert!(!file.rotated(3).exists(), "the oldest lines are gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
