//! The interactive view of `tracer top` (ratatui on crossterm): the rows table, the service-edge
//! table, drill-in to a row's recent and slowest traces (drawn by the terminal sink's
//! [`render_trace`]), help on `?`. Redraws once a second and on every key.
//!
//! The terminal is set up by [`TerminalGuard`] and restored when it drops; callers also restore
//! it from a panic hook (see `cli/top.rs`), since the guard does not run on a panic elsewhere.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Text};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Table, TableState};

use super::view::{self, AgentDrops, SortBy};
use super::{RATE_WINDOW_SECONDS, RowView, Top, TopSnapshot};
use crate::export::render_trace;

/// How often the view redraws without a key press.
const REFRESH: Duration = Duration::from_secs(1);
/// How long one wait for a key lasts (the stop flag is checked in between).
const KEY_POLL: Duration = Duration::from_millis(100);

/// Why the view ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// `q` or Ctrl-C.
    Quit,
    /// The agent stopped (a signal, the traced command exited, an error).
    AgentStopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Screen {
    Rows,
    Edges,
    /// The traces of the row with this id.
    Traces(usize),
}

struct App {
    screen: Screen,
    sort: SortBy,
    selected: usize,
    scroll: u16,
    help: bool,
    slow_ms: f64,
    snapshot: TopSnapshot,
    /// `snapshot.rows`, sorted.
    rows: Vec<RowView>,
    drops: AgentDrops,
}

const HELP: &str = "\
tracer top: what the agent traces, live

  ↑/↓ j/k     select a row      PgUp/PgDn  page
  Enter       the row's recent and slowest traces
  Esc ←       back to the table
  Tab e       rows <-> service edges (client -> server)
  s           sort by the next column
  ?           this help           q Ctrl-C  quit

Rows: one per service, kind (SRV/CLI), method and route.
RATE: requests/s over the last 10 s. ERR%: error spans.
P50/P95/P99: since start, DDSketch, 1 % relative error.
Red: rows with errors. Yellow: P99 over --slow-ms.
Edges to an address: no server span linked (untraced peer).
Status line: the agent's own drops (as on /metrics).";

impl App {
    fn refresh(&mut self, top: &Top, drops: AgentDrops) {
        self.snapshot = top.snapshot();
        self.rows = self.snapshot.rows.clone();
        self.sort.sort(&mut self.rows);
        view::sort_edges(&mut self.snapshot.edges);
        self.drops = drops;
        let len = match self.screen {
            Screen::Edges => self.snapshot.edges.len(),
            _ => self.rows.len(),
        };
        self.selected = self.selected.min(len.saturating_sub(1));
    }

    /// Handles a key; `true` to quit.
    fn key(&mut self, key: KeyEvent, page: usize) -> bool {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if self.help {
            // Any key closes the help, and q still quits.
            self.help = false;
            return matches!(key.code, KeyCode::Char('q'))
                || (ctrl && key.code == KeyCode::Char('c'));
        }
        let len = match self.screen {
            Screen::Edges => self.snapshot.edges.len(),
            _ => self.rows.len(),
        };
        match key.code {
            KeyCode::Char('c') if ctrl => return true,
            KeyCode::Char('q') => return true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Tab | KeyCode::Char('e') => {
                self.screen = match self.screen {
                    Screen::Rows => Screen::Edges,
                    _ => Screen::Rows,
                };
                self.selected = 0;
            }
            KeyCode::Enter | KeyCode::Right => {
                if let (Screen::Rows, Some(row)) = (self.screen, self.rows.get(self.selected)) {
                    self.screen = Screen::Traces(row.id);
                    self.scroll = 0;
                }
            }
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => {
                if let Screen::Traces(_) = self.screen {
                    self.screen = Screen::Rows;
                }
            }
            code => {
                let step = |s: &mut usize, down: bool, n: usize| {
                    *s = if down {
                        (*s + n).min(len.saturating_sub(1))
                    } else {
                        s.saturating_sub(n)
                    }
                };
                let (down, n) = match code {
                    KeyCode::Down | KeyCode::Char('j') => (true, 1),
                    KeyCode::Up | KeyCode::Char('k') => (false, 1),
                    KeyCode::PageDown => (true, page),
                    KeyCode::PageUp => (false, page),
                    KeyCode::Home => (false, usize::MAX),
                    KeyCode::End => (true, usize::MAX / 2),
                    _ => return false,
                };
                if let Screen::Traces(_) = self.screen {
                    let n = u16::try_from(n).unwrap_or(u16::MAX);
                    self.scroll = if down {
                        self.scroll.saturating_add(n)
                    } else {
                        self.scroll.saturating_sub(n)
                    };
                } else {
                    step(&mut self.selected, down, n);
                }
            }
        }
        false
    }
}

fn sort_header(label: &'static str, sort: SortBy) -> String {
    if sort.label() == label {
        format!("{label}▼")
    } else {
        label.to_string()
    }
}

fn draw_rows(f: &mut ratatui::Frame, area: Rect, app: &App) {
    let header = Row::new(
        [
            "SERVICE", "K", "METHOD", "ROUTE", "COUNT", "RATE/s", "ERR%", "P50", "P95", "P99",
        ]
        .map(|h| sort_header(h, app.sort)),
    )
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = app.rows.iter().map(|r| {
        let style = if r.errors > 0 {
            Style::default().fg(Color::Red)
        } else if r.p99 >= app.slow_ms {
            Style::default().fg(Color::Yellow)
        } else {
            Style::default()
        };
        Row::new(vec![
            r.service.clone(),
            match r.kind {
                crate::model::SpanKind::Server => "SRV".to_string(),
                crate::model::SpanKind::Client => "CLI".to_string(),
            },
            r.method.clone(),
            r.route.clone(),
            r.count.to_string(),
            format!("{:.1}", r.rate),
            format!("{:.1}", r.error_percent()),
            view::duration(r.p50),
            view::duration(r.p95),
            view::duration(r.p99),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(10),
        Constraint::Length(3),
        Constraint::Length(6),
        Constraint::Min(12),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(Some(app.selected));
    f.render_stateful_widget(table, area, &mut state);
}

fn draw_edges(f: &mut ratatui::Frame, area: Rect, app: &App) {
    let header = Row::new(["CLIENT", "SERVER", "COUNT", "ERRORS", "P50", "P99"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = app.snapshot.edges.iter().map(|e| {
        let server = if e.virtual_server {
            format!("{} (address)", e.server)
        } else {
            e.server.clone()
        };
        Row::new(vec![
            e.client.clone(),
            server,
            e.count.to_string(),
            e.errors.to_string(),
            view::duration(e.p50),
            view::duration(e.p99),
        ])
        .style(if e.errors > 0 {
            Style::default().fg(Color::Red)
        } else if e.p99 >= app.slow_ms {
            Style::default().fg(Color::Yellow)
        } else {
            Style::default()
        })
    });
    let widths = [
        Constraint::Min(14),
        Constraint::Min(20),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(Some(app.selected));
    f.render_stateful_widget(table, area, &mut state);
}

/// The drill-in text: the row's recent traces, then its slowest, as the terminal prints them.
fn traces_text(top: &Top, app: &App, id: usize) -> (String, Vec<Line<'static>>) {
    let title = app
        .rows
        .iter()
        .find(|r| r.id == id)
        .map(|r| {
            format!(
                "{} {} {} {}",
                r.service,
                view::kind(r.kind),
                r.method,
                r.route
            )
        })
        .unwrap_or_default();
    let drill = top.drill_in(id);
    let mut lines: Vec<Line<'static>> = Vec::new();
    let bold = Style::default().add_modifier(Modifier::BOLD);
    lines.push(Line::styled(
        format!("Recent traces ({})", drill.recent.len()),
        bold,
    ));
    if drill.recent.is_empty() {
        lines.push(Line::raw("  (none kept yet)"));
    }
    for spans in &drill.recent {
        lines.extend(
            render_trace(spans, false)
                .lines()
                .map(|l| Line::raw(l.to_string())),
        );
        lines.push(Line::raw(""));
    }
    lines.push(Line::styled(
        format!("Slowest ({})", drill.slowest.len()),
        bold,
    ));
    for (n, (ns, spans)) in drill.slowest.iter().enumerate() {
        lines.push(Line::raw(format!(
            "#{} {}",
            n + 1,
            view::duration(*ns as f64 / 1e6)
        )));
        lines.extend(
            render_trace(spans, false)
                .lines()
                .map(|l| Line::raw(l.to_string())),
        );
    }
    (title, lines)
}

fn draw(f: &mut ratatui::Frame, top: &Top, app: &App) {
    let [title, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let heading = match app.screen {
        Screen::Rows => format!(
            "tracer top: rows, sort {}   ?:help s:sort Tab:edges Enter:traces q:quit",
            app.sort.label()
        ),
        Screen::Edges => {
            "tracer top: service edges (client -> server)   ?:help Tab:rows q:quit".to_string()
        }
        Screen::Traces(_) => "tracer top: traces   Esc:back ↑/↓:scroll q:quit".to_string(),
    };
    f.render_widget(
        Paragraph::new(heading).style(Style::default().add_modifier(Modifier::REVERSED)),
        title,
    );
    match app.screen {
        Screen::Rows => draw_rows(f, body, app),
        Screen::Edges => draw_edges(f, body, app),
        Screen::Traces(id) => {
            let (name, lines) = traces_text(top, app, id);
            f.render_widget(
                Paragraph::new(Text::from(lines))
                    .block(Block::default().borders(Borders::TOP).title(name))
                    .scroll((app.scroll, 0)),
                body,
            );
        }
    }
    f.render_widget(
        Paragraph::new(view::status_line(&app.snapshot, &app.drops)),
        status,
    );
    if app.help {
        let area = f.area();
        let w = area.width.min(62);
        let h = area.height.min(17);
        let popup = Rect::new(
            area.x + (area.width - w) / 2,
            area.y + (area.height - h) / 2,
            w,
            h,
        );
        f.render_widget(Clear, popup);
        f.render_widget(
            Paragraph::new(HELP.replace("10 s", &format!("{RATE_WINDOW_SECONDS} s"))).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title("help (any key)"),
            ),
            popup,
        );
    }
}

/// The terminal in raw mode on the alternate screen; restored on drop.
pub struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<File>>,
}

impl TerminalGuard {
    /// Raw mode, alternate screen, hidden cursor, drawing to `out` (the terminal).
    pub fn enter(mut out: File) -> io::Result<Self> {
        crossterm::terminal::enable_raw_mode()?;
        if let Err(err) = crossterm::execute!(
            out,
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        ) {
            let _ = crossterm::terminal::disable_raw_mode();
            return Err(err);
        }
        let terminal = Terminal::new(CrosstermBackend::new(out))?;
        Ok(TerminalGuard { terminal })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
        let _ = crossterm::execute!(
            self.terminal.backend_mut(),
            crossterm::terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
    }
}

/// Runs the view until `q`/Ctrl-C (then calls `quit`) or until `stopped` is set.
pub fn run(
    mut guard: TerminalGuard,
    top: Arc<Top>,
    drops: impl Fn() -> AgentDrops,
    stopped: &AtomicBool,
    slow_ms: f64,
    quit: impl FnOnce(),
) -> io::Result<Ended> {
    let mut app = App {
        screen: Screen::Rows,
        sort: SortBy::default(),
        selected: 0,
        scroll: 0,
        help: false,
        slow_ms,
        snapshot: TopSnapshot::default(),
        rows: Vec::new(),
        drops: AgentDrops::default(),
    };
    let mut last = Instant::now();
    app.refresh(&top, drops());
    let mut dirty = true;
    loop {
        if stopped.load(Ordering::Acquire) {
            return Ok(Ended::AgentStopped);
        }
        if dirty || last.elapsed() >= REFRESH {
            app.refresh(&top, drops());
            guard.terminal.draw(|f| draw(f, &top, &app))?;
            last = Instant::now();
            dirty = false;
        }
        if event::poll(KEY_POLL)? {
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    let page = guard
                        .terminal
                        .size()
                        .map_or(10, |s| s.height.saturating_sub(4) as usize);
                    if app.key(key, page.max(1)) {
                        drop(guard);
                        quit();
                        return Ok(Ended::Quit);
                    }
                    dirty = true;
                }
                Event::Resize(..) => {
                    guard.terminal.autoresize()?;
                    dirty = true;
                }
                _ => {}
            }
        }
    }
}
