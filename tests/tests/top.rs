//! `tracer top` end to end, against an uninstrumented Python server called by curl:
//! - without a terminal it prints a plain table every --interval: the server's rows show exactly
//!   the requests sent, ids folded into `{id}`, the error % of a 500 endpoint, and the
//!   curl -> server service edge;
//! - its full-screen view, driven in tmux at 80x24: rows appear with the right counts, `s`
//!   changes the order, Enter shows a row's trace tree, `q` quits and the pane is back to the
//!   shell prompt with no alternate screen left.
//!
//! Waits are on state (the table or the pane showing what is expected), polled, never fixed
//! sleeps.

use std::process::Command;
use std::time::{Duration, Instant};

use tracer_tests::agent::READY_LINE;
use tracer_tests::process::ChildGuard;
use tracer_tests::{PythonServer, curl, free_port, tracer_bin, tracer_command};

/// How long a test waits for what it expects to show.
const WAIT: Duration = Duration::from_secs(60);
/// Between two looks at the output.
const POLL: Duration = Duration::from_millis(100);

/// Polls `f` until it returns `Some`, or panics with `what` and the last state seen.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match f() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not seen within {WAIT:?}; last seen:\n{last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// The last complete table `tracer top` printed.
fn last_table(stdout: &str) -> Option<String> {
    let complete: Vec<&str> = stdout
        .split("tracer top +")
        .filter(|t| t.contains("(rate over the last"))
        .collect();
    complete.last().map(|t| format!("tracer top +{t}"))
}

/// The cells of the table line whose first cells are `prefix`.
fn line_cells(table: &str, prefix: &[&str]) -> Option<Vec<String>> {
    table.lines().find_map(|line| {
        let cells: Vec<String> = line.split_whitespace().map(String::from).collect();
        (cells.len() >= prefix.len() && cells.iter().zip(prefix).all(|(c, p)| c == p))
            .then_some(cells)
    })
}

#[test]
fn without_a_terminal_the_table_counts_each_request_and_the_error_rate() {
    let server = PythonServer::start(free_port(), "top-plain");
    let port = server.port().to_string();
    let mut command = tracer_command();
    command.args(["top", "--port", &port, "--interval", "1"]);
    let mut top = ChildGuard::spawn("tracer top", command);
    if !matches!(
        top.stderr().wait_for_line(WAIT, |l| l.contains(READY_LINE)),
        tracer_tests::process::LineWait::Found(_)
    ) {
        panic!(
            "tracer top did not attach its probes\n{}",
            top.output_report()
        );
    }
    for _ in 0..6 {
        assert_eq!(curl(&[&server.url("/ok?token=secret")]).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(curl(&[&server.url("/status/500")]).status, 500);
    }
    assert_eq!(curl(&[&server.url("/status/200")]).status, 200);

    // Wait until both server rows show every request, then check the rest of that table.
    let table = wait_for("the server rows with 6 and 4 requests", || {
        let text = top.stdout().text();
        let table = last_table(&text).ok_or_else(|| text.clone())?;
        let ok = line_cells(&table, &["top-plain", "SERVER", "GET", "/ok"]);
        let status = line_cells(&table, &["top-plain", "SERVER", "GET", "/status/{id}"]);
        match (ok, status) {
            (Some(ok), Some(status)) if ok[4] == "6" && status[4] == "4" => Ok(table),
            _ => Err(table),
        }
    });
    let ok = line_cells(&table, &["top-plain", "SERVER", "GET", "/ok"]).expect("the /ok row");
    let status = line_cells(&table, &["top-plain", "SERVER", "GET", "/status/{id}"])
        .expect("the /status row");
    // Columns: SERVICE KIND METHOD ROUTE COUNT RATE/s ERR% P50 P95 P99.
    assert_eq!(ok[6], "0.0", "no errors on /ok\n{table}");
    assert_eq!(
        status[6], "75.0",
        "3 of 4 /status requests were 500s\n{table}"
    );
    assert!(
        !table.contains("secret") && !table.contains("/status/500"),
        "no query and no raw ids in rows\n{table}"
    );
    // The curl processes' CLIENT spans make the service edges: each request counted once, on
    // the edge to the server's service when the server span is linked to the curl span, else on
    // an edge to the server's address (a missing link is allowed, a wrong one is not).
    let server_address = format!("127.0.0.1:{port}(address)");
    let edges = wait_for("edges counting all 10 requests", || {
        let text = top.stdout().text();
        let table = last_table(&text).ok_or_else(|| text.clone())?;
        let edges: Vec<Vec<String>> = table
            .lines()
            .filter(|l| l.starts_with("edge "))
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect();
        let total: u64 = edges.iter().filter_map(|e| e[3].parse::<u64>().ok()).sum();
        if total == 10 { Ok(edges) } else { Err(table) }
    });
    for edge in &edges {
        assert!(
            edge[2] == "top-plain" || edge[2] == server_address,
            "every edge ends at the server: {edges:?}"
        );
    }
    let linked = edges
        .iter()
        .find(|e| e[1] == "curl" && e[2] == "top-plain")
        .unwrap_or_else(|| panic!("no curl -> top-plain edge: {edges:?}"));
    assert!(linked[3].parse::<u64>().unwrap_or(0) >= 1, "{edges:?}");
    let errors: u64 = edges.iter().filter_map(|e| e[4].parse::<u64>().ok()).sum();
    assert_eq!(errors, 3, "the three 500s, each once: {edges:?}");

    assert!(top.signal(libc::SIGTERM));
    let status = top
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("tracer top did not exit\n{}", top.output_report()));
    assert!(status.success(), "{status}\n{}", top.output_report());
}

#[test]
fn top_with_a_command_traces_it_and_exits_with_its_status_after_a_last_table() {
    let server = PythonServer::start(free_port(), "top-cmd");
    let script = format!(
        "curl -sS --noproxy '*' -o /dev/null {} && curl -sS --noproxy '*' -o /dev/null {}; exit 3",
        server.url("/ok"),
        server.url("/items/12345")
    );
    let mut command = tracer_command();
    command.args(["top", "--interval", "600", "--", "sh", "-c", &script]);
    let mut top = ChildGuard::spawn("tracer top -- sh", command);
    let status = top
        .wait_timeout(WAIT)
        .unwrap_or_else(|| panic!("tracer top did not exit\n{}", top.output_report()));
    assert_eq!(
        status.code(),
        Some(3),
        "the command's status\n{}",
        top.output_report()
    );
    // Only the command is traced (not the server): its two CLIENT spans, in the table printed
    // at exit. (The service may be `unknown_service:PID` when curl exits before it is named.)
    assert!(top.stdout().wait_closed(Duration::from_secs(10)));
    let text = top.stdout().text();
    let table = last_table(&text).unwrap_or_else(|| panic!("no table\n{}", top.output_report()));
    for route in ["/ok", "/items/{id}"] {
        let row = table.lines().find(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.get(1..5) == Some(&["CLIENT", "GET", route, "1"][..])
        });
        assert!(
            row.is_some(),
            "a CLIENT row for {route} with one request\n{table}"
        );
    }
    assert!(
        !table
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("SERVER")),
        "the server is not traced\n{table}"
    );
    // Its peer is untraced: at exit the two requests are on the edge to the server's address.
    let address = format!("127.0.0.1:{}(address)", server.port());
    let edge = line_cells(&table, &["edge", "curl", &address])
        .or_else(|| {
            table.lines().find_map(|l| {
                let cells: Vec<String> = l.split_whitespace().map(String::from).collect();
                (cells.first().map(String::as_str) == Some("edge")
                    && cells.get(2) == Some(&address))
                .then_some(cells)
            })
        })
        .unwrap_or_else(|| panic!("an edge to {address}\n{table}"));
    assert_eq!((edge[3].as_str(), edge[4].as_str()), ("2", "1"), "{table}");
}

/// A private tmux server (its own socket) with one 80x24 pane running a plain bash; killed on
/// drop, which also ends whatever still runs in the pane.
struct Tmux {
    socket: String,
}

const PROMPT: &str = "top-test$";

impl Tmux {
    fn start() -> Tmux {
        let tmux = Tmux {
            socket: format!("tracer-top-test-{}", std::process::id()),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            "80",
            "-y",
            "24",
            &format!("env PS1='{PROMPT} ' bash --norc --noprofile -i"),
        ]);
        tmux.wait_screen("the shell prompt", |s| s.contains(PROMPT));
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux (`cargo xtask setup` installs it): {e}"));
        if !out.status.success() {
            panic!(
                "tmux {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "main"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn wait_screen(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        wait_for(what, || {
            let screen = self.screen();
            if check(&screen) {
                Ok(screen)
            } else {
                Err(screen)
            }
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

/// The screen line of a row: service, kind and route, as the view draws them.
fn row_line<'a>(screen: &'a str, service: &str, kind: &str, route: &str) -> Option<&'a str> {
    screen.lines().find(|l| {
        let cells: Vec<&str> = l.split_whitespace().collect();
        cells.len() >= 5 && cells[0] == service && cells[1] == kind && cells[3] == route
    })
}

fn count_of(line: &str) -> &str {
    line.split_whitespace().nth(4).unwrap_or("")
}

fn line_index(screen: &str, line: &str) -> usize {
    screen.lines().position(|l| l == line).unwrap_or(usize::MAX)
}

#[test]
fn the_terminal_view_sorts_drills_in_and_restores_the_terminal() {
    let server = PythonServer::start(free_port(), "top-tui");
    let tmux = Tmux::start();
    let command = format!(
        "env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT {} top --port {} --slow-ms 250",
        tracer_bin().display(),
        server.port()
    );
    tmux.keys(&[&command, "Enter"]);
    tmux.wait_screen("the view with its probes attached", |s| {
        s.contains("tracer top: rows") && s.contains("live ")
    });
    assert_eq!(
        tmux.run(&["display", "-p", "-t", "main", "#{alternate_on}"])
            .trim(),
        "1"
    );

    for _ in 0..5 {
        curl(&[&server.url("/ok")]);
    }
    for _ in 0..2 {
        curl(&[&server.url("/slow?ms=300")]);
    }
    assert_eq!(curl(&[&server.url("/status/500")]).status, 500);
    let screen = tmux.wait_screen("rows with 5 and 2 requests", |s| {
        let ok = row_line(s, "top-tui", "SRV", "/ok").map(count_of);
        let slow = row_line(s, "top-tui", "SRV", "/slow").map(count_of);
        let failed = row_line(s, "top-tui", "SRV", "/status/{id}").map(count_of);
        ok == Some("5") && slow == Some("2") && failed == Some("1")
    });
    // Failing rows are red, rows with a p99 over --slow-ms yellow (the terminal's colours 1
    // and 3; a line repeating the colour of the line above carries no code of its own).
    let coloured = tmux.run(&["capture-pane", "-p", "-e", "-t", "main"]);
    let has = |route: &str, code: &str| {
        coloured
            .lines()
            .any(|l| l.contains(route) && l.contains(code))
    };
    assert!(
        has("/status/{id}", "\u{1b}[38;5;1m"),
        "red failing rows\n{coloured:?}"
    );
    assert!(
        has("/slow", "\u{1b}[38;5;3m"),
        "yellow slow rows\n{coloured:?}"
    );
    assert!(
        !has("/ok", "\u{1b}[38;5;1m"),
        "/ok is not red\n{coloured:?}"
    );
    // Sorted by count: /ok above /slow.
    let ok = row_line(&screen, "top-tui", "SRV", "/ok").expect("the /ok row");
    let slow = row_line(&screen, "top-tui", "SRV", "/slow").expect("the /slow row");
    assert!(
        line_index(&screen, ok) < line_index(&screen, slow),
        "{screen}"
    );
    assert!(screen.contains("COUNT▼"), "{screen}");

    // COUNT -> RATE/s -> ERR% -> P50: the slow rows come first.
    tmux.keys(&["s", "s", "s"]);
    let screen = tmux.wait_screen("sorted by P50", |s| {
        s.contains("P50▼")
            && match (
                row_line(s, "top-tui", "SRV", "/ok"),
                row_line(s, "top-tui", "SRV", "/slow"),
            ) {
                (Some(ok), Some(slow)) => line_index(s, slow) < line_index(s, ok),
                _ => false,
            }
    });
    // The first row is a /slow one (the server's or curl's): its trace tree has the server span.
    let first = screen.lines().nth(2).unwrap_or_default().to_string();
    assert!(first.contains("/slow"), "first row {first:?}\n{screen}");
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_screen("the row's trace tree", |s| {
        s.contains("Recent traces") && s.contains("SERVER top-tui GET /slow")
    });
    assert!(screen.contains(" ms "), "durations in the tree\n{screen}");
    tmux.keys(&["Escape"]);
    tmux.wait_screen("back on the table", |s| s.contains("tracer top: rows"));

    tmux.keys(&["?"]);
    tmux.wait_screen("the help", |s| s.contains("help (any key)"));
    tmux.keys(&["Escape"]);
    tmux.wait_screen("the help closed", |s| !s.contains("help (any key)"));
    tmux.keys(&["q"]);
    // The shell is back: the prompt below the command line, off the alternate screen.
    let screen = tmux.wait_screen("the shell prompt after quitting", |s| {
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        lines.last().is_some_and(|l| l.trim_end() == PROMPT)
            && lines.iter().any(|l| l.contains(" top --port "))
    });
    assert_eq!(
        tmux.run(&["display", "-p", "-t", "main", "#{alternate_on}"])
            .trim(),
        "0",
        "{screen}"
    );
    assert!(!screen.contains("tracer top: rows"), "{screen}");
    // The agent's log comes back to stderr after the view.
    assert!(screen.contains("tracer stopped"), "{screen}");

    // Ctrl-C quits too (raw mode turns it into a key, not a signal).
    tmux.run(&["clear-history", "-t", "main"]);
    tmux.keys(&["clear", "Enter"]);
    tmux.wait_screen("a cleared screen", |s| !s.contains("tracer stopped"));
    tmux.keys(&[&command, "Enter"]);
    tmux.wait_screen("the view again", |s| s.contains("live "));
    tmux.keys(&["C-c"]);
    let screen = tmux.wait_screen("the shell prompt after Ctrl-C", |s| {
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        lines.last().is_some_and(|l| l.trim_end() == PROMPT) && s.contains("tracer stopped")
    });
    assert_eq!(
        tmux.run(&["display", "-p", "-t", "main", "#{alternate_on}"])
            .trim(),
        "0",
        "{screen}"
    );
}
