//! "Now", in one place: every time the tool stores or compares is epoch seconds (UTC) from here.

#[derive(Debug, Clone, Copy, Default)]
pub struct Clock;

impl Clock {
    pub fn now(&self) -> i64 {
        chrono::Utc::now().timestamp()
    }
}
