//! `orphans N` makes N zombies whose parent died, re-parented to the nearest subreaper.
//! Its own test binary: it makes this process a subreaper, which must not leak into others.

use tsboot_tests::fake_tailscaled_ctl::FakeTailscaled;

/// Zombie children of `parent`, from /proc.
fn zombies_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let ppid = f.next().and_then(|p| p.parse::<i32>().ok());
        if state == Some("Z") && ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

#[test]
#[allow(
    unsafe_code,
    reason = "PR_SET_CHILD_SUBREAPER on the test process itself"
)]
fn orphans_become_zombies_of_the_subreaper() {
    // SAFETY: plain prctl on this process.
    let rc = unsafe { nix::libc::prctl(nix::libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    let me = std::process::id() as i32;
    let fake = FakeTailscaled::start("orphans", None, &[]);
    let before = zombies_of(me).len();
    fake.control("orphans 50");
    // The answer comes after the middle process exited, so all 50 are already ours.
    let zombies = zombies_of(me);
    assert_eq!(zombies.len() - before, 50, "{zombies:?}");
    for pid in zombies {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
    assert!(zombies_of(me).is_empty());
    assert_eq!(fake.watchers(), 0, "the fake is still serving");
}
