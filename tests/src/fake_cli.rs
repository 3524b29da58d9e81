//! The fake `tailscale` and `iptables`/`ip6tables` programs (binaries `fake-tailscale`,
//! `fake-iptables`), plus the argv recording every fake shares.
//!
//! Recording follows the reference harness (`main_test.go@39efba528`): each fake appends
//! `"$0 $@"` — the program path as executed (a script's `$0`, see [`shell_argv`]), arguments
//! joined by single spaces — to the file named by `TS_TEST_RECORD_ARGS`, in one `O_APPEND`
//! write so concurrent fakes never interleave.
//!
//! `fake-tailscale`:
//! * records its argv;
//! * for `up`: sleeps `FAKE_TAILSCALE_UP_SLEEP_MS` first if set (a slow login); if both
//!   `FAKE_TAILSCALED_CONTROL` and `FAKE_TAILSCALE_UP_REPLAY` are set, asks the fake tailscaled
//!   to `replay` that NDJSON file and waits for the answer; prints `FAKE_TAILSCALE_UP_STDERR` to
//!   stderr if set; exits with `FAKE_TAILSCALE_EXIT` (default 0);
//! * any other subcommand exits 0.
//!
//! `fake-iptables` (installed as `iptables` and `ip6tables`; argv[0]'s basename picks the name
//! used in messages and the state file):
//! * records mutating commands (`-I`, `-A`, `-D`) in `TS_TEST_RECORD_ARGS` and read-only ones
//!   (`-C`, `-S`) in `$TS_TEST_RECORD_ARGS.readonly`, so argv comparisons count changes only;
//! * keeps rules like the real tool, in a JSON file: `FAKE_IPTABLES_STATE`, else
//!   `$TS_TEST_RECORD_ARGS.<basename>.state`, else nowhere (every list is empty);
//! * stores and prints rules in iptables-save's canonical form (`-d 100.64.0.1/32 -j DNAT
//!   --to-destination 1.2.3.4`: a bare address gains `/32` or `/128`);
//! * `FAKE_IPTABLES_FAIL=1` makes mutating commands fail (exit 1) after recording them;
//! * `FAKE_IPTABLES_HANG_FILE=<path>`: while that file exists every command hangs (and writes
//!   its pid to `<path>.hung` first) before doing
//!   anything (a hung iptables: xtables lock, stuck kernel), and goes on once it is removed.
//!
//! Both fakes, when `FAKE_FD_LOG` names a file, first append one line to it: the argv and the
//! file descriptors above stdio the program was started with (`fds=` empty when none), so a
//! test can see which descriptors leak into the children of tsboot's phases.
#![allow(
    unsafe_code,
    reason = "the fakes read their exec path (getauxval) and probe inherited fds (fcntl)"
)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Appends `"$0 $@"` and a newline to `file` in one write.
pub fn record_line(file: &Path, argv: &[OsString]) -> std::io::Result<()> {
    let mut line = argv
        .iter()
        .map(|a| a.as_bytes())
        .collect::<Vec<_>>()
        .join(&b' ');
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    f.write_all(&line)
}

/// This process's argv with argv[0] replaced by the path the kernel executed — what `$0` is in
/// the reference's fake shell scripts. A caller may set argv[0] to a bare name (ts-init passes
/// `tailscaled`), but a script's `$0` is the file found on PATH, e.g. `/usr/bin/tailscaled`.
pub fn shell_argv() -> Vec<OsString> {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(execfn) = exec_path() {
        match argv.first_mut() {
            Some(first) => *first = execfn,
            None => argv.push(execfn),
        }
    }
    argv
}

/// `AT_EXECFN`: the pathname given to execve(2).
fn exec_path() -> Option<OsString> {
    use std::os::unix::ffi::OsStringExt as _;
    // SAFETY: getauxval has no preconditions; AT_EXECFN, when present, points at a
    // NUL-terminated string on the initial stack that lives as long as the process.
    let ptr = unsafe { nix::libc::getauxval(nix::libc::AT_EXECFN) } as *const nix::libc::c_char;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` is the non-null AT_EXECFN string described above.
    let bytes = unsafe { std::ffi::CStr::from_ptr(ptr) }.to_bytes().to_vec();
    Some(OsString::from_vec(bytes))
}

/// Records [`shell_argv`] in `TS_TEST_RECORD_ARGS` (if set). A failure is reported on stderr
/// and otherwise ignored: the test will see the missing line.
pub fn record_args() {
    if let Some(file) = std::env::var_os("TS_TEST_RECORD_ARGS") {
        if let Err(e) = record_line(Path::new(&file), &shell_argv()) {
            eprintln!("fake: recording argv to {}: {e}", file.to_string_lossy());
        }
    }
}

fn env_ms(var: &str) -> Option<Duration> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// Sends one line command to the fake tailscaled's control socket and returns its answer.
pub fn control_command(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.write_all(command.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer.trim_end().to_string())
}

/// The descriptors above stdio this process was started with, found by probing (`fcntl`
/// opens nothing, unlike listing `/proc/self/fd`).
pub fn inherited_fds() -> Vec<i32> {
    (3..1024)
        .filter(|fd| {
            // SAFETY: F_GETFD only reads the descriptor's flags; an fd that is not open gives EBADF.
            let flags = unsafe { nix::libc::fcntl(*fd, nix::libc::F_GETFD) };
            flags != -1
        })
        .collect()
}

/// With `FAKE_FD_LOG` set: appends `"$0 $@ fds=3,4"` (the inherited descriptors above stdio).
pub fn log_inherited_fds() {
    let Some(file) = std::env::var_os("FAKE_FD_LOG") else {
        return;
    };
    let fds = inherited_fds();
    let mut argv = shell_argv();
    let list: Vec<String> = fds.iter().map(i32::to_string).collect();
    argv.push(format!("fds={}", list.join(",")).into());
    if let Err(e) = record_line(Path::new(&file), &argv) {
        eprintln!("fake: FAKE_FD_LOG: {e}");
    }
}

/// `main` of `fake-tailscale`; returns the exit code.
pub fn tailscale_main() -> i32 {
    log_inherited_fds();
    record_args();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sub = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--socket" {
            it.next();
        } else if !a.starts_with('-') {
            sub = Some(a.as_str());
            break;
        }
    }
    if sub != Some("up") {
        return 0;
    }
    if let Some(d) = env_ms("FAKE_TAILSCALE_UP_SLEEP_MS") {
        std::thread::sleep(d);
    }
    if let (Some(ctl), Some(replay)) = (
        std::env::var_os("FAKE_TAILSCALED_CONTROL"),
        std::env::var_os("FAKE_TAILSCALE_UP_REPLAY"),
    ) {
        let cmd = format!("replay {}", Path::new(&replay).display());
        match control_command(Path::new(&ctl), &cmd) {
            Ok(a) if a.starts_with("ok") => {}
            Ok(a) => {
                eprintln!("fake tailscale up: fake tailscaled answered {cmd:?} with {a:?}");
                return 1;
            }
            Err(e) => {
                eprintln!(
                    "fake tailscale up: control socket {}: {e}",
                    Path::new(&ctl).display()
                );
                return 1;
            }
        }
    }
    if let Ok(msg) = std::env::var("FAKE_TAILSCALE_UP_STDERR") {
        eprintln!("{msg}");
    }
    std::env::var("FAKE_TAILSCALE_EXIT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Rules per table, per chain, in order, canonical form.
pub type Tables = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn builtin_chains(table: &str) -> &'static [&'static str] {
    match table {
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        "raw" => &["PREROUTING", "OUTPUT"],
        _ => &["INPUT", "FORWARD", "OUTPUT"],
    }
}

/// One parsed invocation.
#[derive(Debug, PartialEq, Eq)]
pub enum IptCommand {
    Insert {
        chain: String,
        pos: usize,
        rule: String,
    },
    Append {
        chain: String,
        rule: String,
    },
    Delete {
        chain: String,
        rule: String,
    },
    DeleteNum {
        chain: String,
        num: usize,
    },
    Check {
        chain: String,
        rule: String,
    },
    List {
        chain: Option<String>,
    },
}

impl IptCommand {
    pub fn is_mutating(&self) -> bool {
        !matches!(self, IptCommand::Check { .. } | IptCommand::List { .. })
    }
}

/// Canonical iptables-save form of a rule spec: `-s`/`-d` as prefixes (a bare address gains
/// its full length), addresses in standard notation, source/destination/interfaces/protocol
/// first (the order iptables-save prints them, `!` kept before its flag), `-m tcp` added after
/// `-p tcp` when TCP options follow (as iptables loads the match implicitly), the rest as given.
pub fn canonical_rule(spec: &[String]) -> String {
    let mut front: [Option<String>; 5] = Default::default();
    let mut rest: Vec<String> = Vec::new();
    let mut i = 0;
    let mut negate = false;
    while i < spec.len() {
        let a = spec[i].as_str();
        if a == "!"
            && matches!(
                spec.get(i + 1).map(String::as_str),
                Some("-s" | "-d" | "-i" | "-o" | "-p")
            )
        {
            negate = true;
            i += 1;
            continue;
        }
        let value = spec.get(i + 1).cloned();
        let slot = match a {
            "-s" | "--source" => Some(0),
            "-d" | "--destination" => Some(1),
            "-i" | "--in-interface" => Some(2),
            "-o" | "--out-interface" => Some(3),
            "-p" | "--protocol" => Some(4),
            _ => None,
        };
        match (slot, value) {
            (Some(n), Some(v)) => {
                let flag = ["-s", "-d", "-i", "-o", "-p"][n];
                let v = if n < 2 { canonical_prefix(&v) } else { v };
                let bang = if std::mem::take(&mut negate) {
                    "! "
                } else {
                    ""
                };
                front[n] = Some(format!("{bang}{flag} {v}"));
                i += 2;
            }
            _ => {
                if a == "--to-destination" {
                    if let Some(v) = spec.get(i + 1) {
                        let v = v.parse::<IpAddr>().map_or(v.clone(), |ip| ip.to_string());
                        rest.push(format!("{a} {v}"));
                        i += 2;
                        continue;
                    }
                }
                rest.push(a.to_string());
                i += 1;
            }
        }
    }
    let tcp_options = rest
        .iter()
        .any(|w| matches!(w.as_str(), "--tcp-flags" | "--dport" | "--sport" | "--syn"));
    let has_match = rest.windows(2).any(|w| w[0] == "-m" && w[1] == "tcp");
    if front[4].as_deref() == Some("-p tcp") && tcp_options && !has_match {
        rest.insert(0, "-m tcp".to_string());
    }
    front
        .into_iter()
        .flatten()
        .chain(rest)
        .collect::<Vec<_>>()
        .join(" ")
}

fn canonical_prefix(v: &str) -> String {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (v, None),
    };
    match addr.parse::<IpAddr>() {
        Ok(ip) => {
            let full = if ip.is_ipv4() { "32" } else { "128" };
            format!("{ip}/{}", len.unwrap_or(full))
        }
        Err(_) => v.to_string(),
    }
}

/// Parses iptables arguments (without argv[0]): `[-t TABLE] [-w [SECS]] <command> ...`.
pub fn parse_iptables(args: &[String]) -> Result<(String, IptCommand), String> {
    let mut table = "filter".to_string();
    let mut words: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-t" | "--table" => {
                table = args
                    .get(i + 1)
                    .cloned()
                    .ok_or("option \"-t\" requires an argument")?;
                i += 2;
            }
            "-w" | "--wait" => {
                i += 1;
                if args.get(i).is_some_and(|a| a.parse::<u32>().is_ok()) {
                    i += 1;
                }
            }
            _ => {
                words.push(args[i].clone());
                i += 1;
            }
        }
    }
    let mut it = words.into_iter();
    let cmd = it.next().ok_or("no command specified")?;
    let rest: Vec<String> = it.collect();
    let chain = |rest: &[String]| -> Result<String, String> {
        rest.first()
            .cloned()
            .ok_or_else(|| format!("option \"{cmd}\" requires a chain"))
    };
    let command = match cmd.as_str() {
        "-I" | "--insert" => {
            let chain = chain(&rest)?;
            let (pos, spec) = match rest.get(1).and_then(|p| p.parse::<usize>().ok()) {
                Some(p) if p >= 1 => (p, &rest[2..]),
                Some(_) => return Err("Invalid rule number `0'".into()),
                None => (1, &rest[1..]),
            };
            IptCommand::Insert {
                chain,
                pos,
                rule: canonical_rule(spec),
            }
        }
        "-A" | "--append" => IptCommand::Append {
            chain: chain(&rest)?,
            rule: canonical_rule(&rest[1..]),
        },
        "-D" | "--delete" => {
            let chain = chain(&rest)?;
            match (
                rest.len(),
                rest.get(1).and_then(|n| n.parse::<usize>().ok()),
            ) {
                (2, Some(num)) => IptCommand::DeleteNum { chain, num },
                _ => IptCommand::Delete {
                    chain,
                    rule: canonical_rule(&rest[1..]),
                },
            }
        }
        "-C" | "--check" => IptCommand::Check {
            chain: chain(&rest)?,
            rule: canonical_rule(&rest[1..]),
        },
        "-S" | "--list-rules" => IptCommand::List {
            chain: rest.first().cloned(),
        },
        other => {
            return Err(format!(
                "unknown command {other:?} (the fake knows -I -A -D -C -S)"
            ))
        }
    };
    Ok((table, command))
}

/// Applies `cmd` to `tables`: (exit code, stdout, stderr).
pub fn apply(
    prog: &str,
    tables: &mut Tables,
    table: &str,
    cmd: &IptCommand,
) -> (i32, String, String) {
    let bad_rule = format!("{prog}: Bad rule (does a matching rule exist in that chain?).\n");
    let no_chain = format!("{prog}: No chain/target/match by that name.\n");
    let ok = || (0, String::new(), String::new());
    let fail = |stderr: String| (1, String::new(), stderr);
    let chains = tables.entry(table.to_string()).or_default();
    let known = |chains: &BTreeMap<String, Vec<String>>, c: &str| {
        builtin_chains(table).contains(&c) || chains.contains_key(c)
    };
    match cmd {
        IptCommand::Insert { chain, pos, rule } => {
            if !known(chains, chain) {
                return fail(no_chain);
            }
            let rules = chains.entry(chain.clone()).or_default();
            if *pos > rules.len() + 1 {
                return fail(format!("{prog}: Index of insertion too big.\n"));
            }
            rules.insert(pos - 1, rule.clone());
            ok()
        }
        IptCommand::Append { chain, rule } => {
            if !known(chains, chain) {
                return fail(no_chain);
            }
            chains.entry(chain.clone()).or_default().push(rule.clone());
            ok()
        }
        IptCommand::Delete { chain, rule } => {
            let rules = chains.entry(chain.clone()).or_default();
            match rules.iter().position(|r| r == rule) {
                Some(i) => {
                    rules.remove(i);
                    ok()
                }
                None => fail(bad_rule),
            }
        }
        IptCommand::DeleteNum { chain, num } => {
            let rules = chains.entry(chain.clone()).or_default();
            if *num == 0 || *num > rules.len() {
                return fail(format!("{prog}: Index of deletion too big.\n"));
            }
            rules.remove(num - 1);
            ok()
        }
        IptCommand::Check { chain, rule } => {
            if chains.get(chain).is_some_and(|r| r.contains(rule)) {
                ok()
            } else {
                fail(bad_rule)
            }
        }
        IptCommand::List { chain } => {
            let mut out = String::new();
            let mut names: Vec<String> = builtin_chains(table)
                .iter()
                .map(|c| c.to_string())
                .collect();
            for c in chains.keys() {
                if !names.contains(c) {
                    names.push(c.clone());
                }
            }
            if let Some(c) = chain {
                if !known(chains, c) {
                    return fail(no_chain);
                }
                names = vec![c.clone()];
            }
            for c in &names {
                if builtin_chains(table).contains(&c.as_str()) {
                    out.push_str(&format!("-P {c} ACCEPT\n"));
                } else {
                    out.push_str(&format!("-N {c}\n"));
                }
            }
            for c in &names {
                for r in chains.get(c).map(Vec::as_slice).unwrap_or(&[]) {
                    out.push_str(&format!("-A {c} {r}\n"));
                }
            }
            (0, out, String::new())
        }
    }
}

fn state_path(prog: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FAKE_IPTABLES_STATE") {
        return Some(PathBuf::from(p));
    }
    let rec = std::env::var_os("TS_TEST_RECORD_ARGS")?;
    let mut p = rec;
    p.push(format!(".{prog}.state"));
    Some(PathBuf::from(p))
}

fn load_tables(path: Option<&Path>) -> Result<Tables, String> {
    let Some(path) = path else {
        return Ok(Tables::new());
    };
    match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => Ok(Tables::new()),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("fake iptables state {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tables::new()),
        Err(e) => Err(format!("fake iptables state {}: {e}", path.display())),
    }
}

fn save_tables(path: &Path, tables: &Tables) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let text = serde_json::to_vec_pretty(tables).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("fake iptables state {}: {e}", path.display()))
}

/// `main` of `fake-iptables`; returns the exit code.
pub fn iptables_main() -> i32 {
    log_inherited_fds();
    let argv = shell_argv();
    let prog = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "iptables".into());
    let args: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    hang_while_file_exists();
    let parsed = parse_iptables(&args);
    let mutating = parsed.as_ref().map_or(true, |(_, c)| c.is_mutating());
    if let Some(rec) = std::env::var_os("TS_TEST_RECORD_ARGS") {
        let mut file = rec;
        if !mutating {
            file.push(".readonly");
        }
        if let Err(e) = record_line(Path::new(&file), &argv) {
            eprintln!("fake {prog}: recording argv: {e}");
        }
    }
    let (table, cmd) = match parsed {
        Ok(p) => p,
        Err(why) => {
            eprintln!("{prog} v1.8.9 (fake): {why}\nTry `{prog} -h' for more information.");
            return 2;
        }
    };
    if mutating && std::env::var("FAKE_IPTABLES_FAIL").is_ok_and(|v| v == "1") {
        eprintln!("{prog}: fake failure (FAKE_IPTABLES_FAIL=1)");
        return 1;
    }
    let path = state_path(&prog);
    let mut tables = match load_tables(path.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return 4;
        }
    };
    let (code, out, err) = apply(&prog, &mut tables, &table, &cmd);
    print!("{out}");
    eprint!("{err}");
    if code == 0 && mutating {
        if let Some(path) = path {
            if let Err(e) = save_tables(&path, &tables) {
                eprintln!("{e}");
                return 4;
            }
        }
    }
    code
}

/// A hung iptables, for as long as `FAKE_IPTABLES_HANG_FILE` exists.
fn hang_while_file_exists() {
    let Some(file) = std::env::var_os("FAKE_IPTABLES_HANG_FILE") else {
        return;
    };
    let mut hung = file.clone();
    hung.push(".hung");
    if Path::new(&file).exists() {
        // Tells the test a command is hanging now.
        let _ = std::fs::write(&hung, std::process::id().to_string());
    }
    while Path::new(&file).exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn run(tables: &mut Tables, line: &str) -> (i32, String, String) {
        let (table, cmd) = parse_iptables(&args(line)).expect("parse");
        apply("iptables", tables, &table, &cmd)
    }

    #[test]
    fn canonical_form_matches_iptables_save() {
        assert_eq!(
            canonical_rule(&args("-d 100.64.0.1 -j DNAT --to-destination 1.2.3.4")),
            "-d 100.64.0.1/32 -j DNAT --to-destination 1.2.3.4"
        );
        assert_eq!(
            canonical_rule(&args("-j DNAT -d fd7a:0:0::1 --to-destination fd00:0::5")),
            "-d fd7a::1/128 -j DNAT --to-destination fd00::5"
        );
        assert_eq!(
            canonical_rule(&args("-p tcp -s 10.0.0.0/8 -j ACCEPT")),
            "-s 10.0.0.0/8 -p tcp -j ACCEPT"
        );
        // As iptables-save prints them (checked against the real tool).
        assert_eq!(
            canonical_rule(&args(
                "! -i tailscale0 -m comment --comment tsboot-egress -j DNAT --to-destination 100.64.0.2"
            )),
            "! -i tailscale0 -m comment --comment tsboot-egress -j DNAT --to-destination 100.64.0.2"
        );
        assert_eq!(
            canonical_rule(&args(
                "-o tailscale0 -p tcp --tcp-flags SYN,RST SYN -m comment --comment tsboot-egress -j TCPMSS --clamp-mss-to-pmtu"
            )),
            "-o tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m comment --comment tsboot-egress -j TCPMSS --clamp-mss-to-pmtu"
        );
        assert_eq!(
            canonical_rule(&args(
                "-d 10.0.0.1 -p tcp --dport 80 -j DNAT --to-destination 1.2.3.4"
            )),
            "-d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 1.2.3.4"
        );
    }

    #[test]
    fn check_list_insert_delete() {
        let mut t = Tables::new();
        let rule = "-d 100.64.0.1 -j DNAT --to-destination 1.2.3.4";
        assert_eq!(run(&mut t, &format!("-t nat -C PREROUTING {rule}")).0, 1);
        assert_eq!(
            run(&mut t, "-t nat -S PREROUTING").1,
            "-P PREROUTING ACCEPT\n"
        );
        assert_eq!(run(&mut t, &format!("-t nat -I PREROUTING 1 {rule}")).0, 0);
        assert_eq!(run(&mut t, &format!("-t nat -C PREROUTING {rule}")).0, 0);
        assert_eq!(
            run(
                &mut t,
                "-t nat -C PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 1.2.3.4"
            )
            .0,
            0,
            "/32 and bare are the same rule"
        );
        assert_eq!(
            run(
                &mut t,
                "-t nat -A PREROUTING -d 100.64.0.2 -j DNAT --to-destination 1.2.3.4"
            )
            .0,
            0
        );
        assert_eq!(
            run(
                &mut t,
                "-t nat -I PREROUTING -d 100.64.0.3 -j DNAT --to-destination 1.2.3.4"
            )
            .0,
            0
        );
        assert_eq!(
            run(&mut t, "-t nat -S PREROUTING").1,
            "-P PREROUTING ACCEPT\n\
             -A PREROUTING -d 100.64.0.3/32 -j DNAT --to-destination 1.2.3.4\n\
             -A PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 1.2.3.4\n\
             -A PREROUTING -d 100.64.0.2/32 -j DNAT --to-destination 1.2.3.4\n"
        );
        assert_eq!(run(&mut t, &format!("-t nat -D PREROUTING {rule}")).0, 0);
        let (code, _, err) = run(&mut t, &format!("-t nat -D PREROUTING {rule}"));
        assert_eq!(code, 1);
        assert_eq!(
            err,
            "iptables: Bad rule (does a matching rule exist in that chain?).\n"
        );
        assert_eq!(run(&mut t, "-t nat -D PREROUTING 2").0, 0);
        assert_eq!(run(&mut t, "-t nat -S PREROUTING").1.lines().count(), 2);
        assert_eq!(run(&mut t, "-t nat -I PREROUTING 9 -j ACCEPT").0, 1);
        assert_eq!(run(&mut t, "-t nat -S NOPE").0, 1);
        // The filter table is separate.
        assert_eq!(
            run(&mut t, "-S").1,
            "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"
        );
    }

    #[test]
    fn mutating_vs_readonly() {
        for (line, m) in [
            ("-t nat -I PREROUTING 1 -j ACCEPT", true),
            ("-t nat -A PREROUTING -j ACCEPT", true),
            ("-t nat -D PREROUTING -j ACCEPT", true),
            ("-t nat -C PREROUTING -j ACCEPT", false),
            ("-t nat -S PREROUTING", false),
            ("-w -t nat -S", false),
        ] {
            assert_eq!(
                parse_iptables(&args(line)).unwrap().1.is_mutating(),
                m,
                "{line}"
            );
        }
        assert!(parse_iptables(&args("-t nat")).is_err());
        assert!(parse_iptables(&args("-X FOO")).is_err());
    }
}
