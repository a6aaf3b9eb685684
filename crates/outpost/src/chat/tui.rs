//! The terminal interface of `outpost chat` (ratatui on crossterm): friends with presence,
//! unread counts and requests on the left, the conversation with each message's delivery
//! state on the right, the line being typed, and a status line that says which server the
//! client is on and why.
//!
//! Keys: Up/Down choose a friend; Enter sends the line to them, or runs it when it starts
//! with `/` (`/add JID` asks or approves, `/remove JID`, `/quit`); Esc or Ctrl-C quits.
//! Opening a conversation tells the friend its messages were read (XEP-0333).

use std::collections::{BTreeMap, BTreeSet};

use outpost_client::{Client, Command, DeliveryState, Event, Path, RosterItem};
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::{DefaultTerminal, Frame};
use tokio::sync::mpsc;

/// One line of a conversation.
struct Said {
    mine: bool,
    body: String,
    id: String,
    state: Option<DeliveryState>,
}

#[derive(Default)]
struct Friend {
    item: Option<RosterItem>,
    available: bool,
    unread: usize,
    path: Option<Path>,
    said: Vec<Said>,
}

/// What the screen shows.
struct App {
    me: String,
    status: String,
    friends: BTreeMap<String, Friend>,
    /// Who asked to be friends and has no answer yet.
    asking: BTreeSet<String>,
    selected: usize,
    input: String,
    notice: String,
}

impl App {
    fn new(me: &str) -> App {
        App {
            me: me.to_owned(),
            status: "connecting…".to_owned(),
            friends: BTreeMap::new(),
            asking: BTreeSet::new(),
            selected: 0,
            input: String::new(),
            notice: String::new(),
        }
    }

    fn selected_jid(&self) -> Option<String> {
        self.friends.keys().nth(self.selected).cloned()
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected {
                server, why, jid, ..
            } => self.status = format!("{jid} on {server} ({})", why_text(&why)),
            Event::Disconnected { server, reason } => {
                self.status = format!("reconnecting: {server} lost ({reason})");
            }
            Event::Message { from, body, id, .. } => {
                let friend = self.friends.entry(from).or_default();
                friend.unread += 1;
                friend.said.push(Said {
                    mine: false,
                    body,
                    id,
                    state: None,
                });
            }
            Event::Sent { to, body, id } => self.friends.entry(to).or_default().said.push(Said {
                mine: true,
                body,
                id,
                state: Some(DeliveryState::Queued),
            }),
            Event::Presence { from, available } => {
                self.friends.entry(from).or_default().available = available;
            }
            Event::Subscription { from } => {
                self.notice = format!("{from} wants to be friends: /add {from}");
                self.asking.insert(from);
            }
            Event::Delivery { id, state } => self.delivered(&id, state),
            Event::Path { with, path } => self.friends.entry(with).or_default().path = Some(path),
            Event::Roster { items } => {
                for item in items {
                    self.asking.remove(&item.jid);
                    let friend = self.friends.entry(item.jid.clone()).or_default();
                    friend.available = item.available;
                    friend.item = Some(item);
                }
            }
            Event::Error { text } => self.notice = text,
        }
    }

    fn delivered(&mut self, id: &str, state: DeliveryState) {
        let said = self
            .friends
            .values_mut()
            .flat_map(|f| f.said.iter_mut())
            .find(|s| s.mine && s.id == id);
        if let Some(said) = said {
            // States only move forward (a late "queued" after "delivered" is old news).
            if said.state.is_none_or(|s| s < state) {
                said.state = Some(state);
            }
        }
    }

    /// The user opened a conversation: its unread messages are read now.
    fn read_selected(&mut self) -> Option<Command> {
        let jid = self.selected_jid()?;
        let friend = self.friends.get_mut(&jid)?;
        if friend.unread == 0 {
            return None;
        }
        friend.unread = 0;
        let last = friend.said.iter().rev().find(|s| !s.mine)?;
        Some(Command::Read {
            to: jid,
            id: last.id.clone(),
        })
    }

    /// What the typed line asks for.
    fn submit(&mut self) -> Option<Command> {
        self.notice.clear();
        let line = std::mem::take(&mut self.input);
        let line = line.trim();
        if let Some(rest) = line.strip_prefix('/') {
            let (verb, arg) = rest.split_once(' ').unwrap_or((rest, ""));
            let jid = arg.trim().to_owned();
            return match (verb, jid.is_empty()) {
                ("quit", _) => Some(Command::Quit),
                ("add", false) => Some(Command::Add { jid }),
                ("remove", false) => Some(Command::Remove { jid }),
                _ => {
                    self.notice = "commands: /add JID, /remove JID, /quit".to_owned();
                    None
                }
            };
        }
        if line.is_empty() {
            return None;
        }
        let Some(to) = self.selected_jid() else {
            self.notice = "no friend to write to yet: /add JID".to_owned();
            return None;
        };
        let id = format!("tui-{}-{}", std::process::id(), self.sent_count());
        self.friends.entry(to.clone()).or_default().said.push(Said {
            mine: true,
            body: line.to_owned(),
            id: id.clone(),
            state: None,
        });
        Some(Command::Send {
            to,
            body: line.to_owned(),
            id: Some(id),
        })
    }

    fn sent_count(&self) -> usize {
        self.friends
            .values()
            .map(|f| f.said.iter().filter(|s| s.mine).count())
            .sum()
    }
}

fn why_text(why: &str) -> &str {
    match why {
        "home" => "home server",
        "failover" => "home unreachable, on the next server",
        "returned" => "back on the home server",
        "redirected" => "sent here by the server",
        other => other,
    }
}

/// Runs the interface until the user quits or the client stops.
pub(crate) async fn run(
    client: Client,
    mut events: mpsc::Receiver<Event>,
    me: &str,
) -> anyhow::Result<()> {
    let mut terminal = ratatui::init();
    let result = run_on(&mut terminal, &client, &mut events, me).await;
    ratatui::restore();
    result
}

async fn run_on(
    terminal: &mut DefaultTerminal,
    client: &Client,
    events: &mut mpsc::Receiver<Event>,
    me: &str,
) -> anyhow::Result<()> {
    let mut keys = keyboard();
    let mut app = App::new(me);
    loop {
        terminal.draw(|frame| draw(frame, &app))?;
        let command = tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    app.on_event(event);
                    app.read_selected()
                }
                None => return Ok(()),
            },
            key = keys.recv() => match key {
                Some(key) => on_key(&mut app, key),
                None => Some(Command::Quit),
            },
        };
        if let Some(command) = command {
            let quit = command == Command::Quit;
            client.command(command).await;
            if quit {
                return Ok(());
            }
        }
    }
}

/// Key presses, read on a thread of their own (crossterm's reading blocks).
fn keyboard() -> mpsc::Receiver<KeyEvent> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        while let Ok(event) = event::read() {
            if let TermEvent::Key(key) = event
                && tx.blocking_send(key).is_err()
            {
                return;
            }
        }
    });
    rx
}

fn on_key(app: &mut App, key: KeyEvent) -> Option<Command> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    match key.code {
        KeyCode::Esc => Some(Command::Quit),
        KeyCode::Char('c') if ctrl => Some(Command::Quit),
        KeyCode::Char(c) => {
            app.input.push(c);
            None
        }
        KeyCode::Backspace => {
            app.input.pop();
            None
        }
        KeyCode::Enter => app.submit(),
        KeyCode::Up => {
            app.selected = app.selected.saturating_sub(1);
            app.read_selected()
        }
        KeyCode::Down => {
            app.selected = (app.selected + 1).min(app.friends.len().saturating_sub(1));
            app.read_selected()
        }
        _ => None,
    }
}

fn draw(frame: &mut Frame<'_>, app: &App) {
    let [main, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(32), Constraint::Percentage(68)]).areas(main);
    draw_friends(frame, app, left);
    draw_conversation(frame, app, right);
    frame.render_widget(
        Paragraph::new(format!("> {}", app.input)).block(
            Block::default()
                .borders(Borders::ALL)
                .title(app.notice.as_str()),
        ),
        input,
    );
    frame.render_widget(
        Paragraph::new(app.status.as_str())
            .style(Style::default().add_modifier(Modifier::REVERSED)),
        status,
    );
}

fn draw_friends(frame: &mut Frame<'_>, app: &App, area: ratatui::layout::Rect) {
    let mut items: Vec<ListItem<'_>> = app
        .friends
        .iter()
        .map(|(jid, f)| {
            let dot = if f.available {
                Span::styled("● ", Style::default().fg(Color::Green))
            } else {
                Span::raw("○ ")
            };
            let unread = if f.unread > 0 {
                format!(" ({})", f.unread)
            } else {
                String::new()
            };
            let pending = match &f.item {
                Some(item) if item.pending => " (asked)",
                _ => "",
            };
            ListItem::new(Line::from(vec![
                dot,
                Span::raw(format!("{jid}{unread}{pending}")),
            ]))
        })
        .collect();
    items.extend(
        app.asking
            .iter()
            .map(|jid| ListItem::new(format!("? {jid} asks to be friends"))),
    );
    let mut state = ListState::default().with_selected(Some(app.selected));
    frame.render_stateful_widget(
        List::new(items)
            .block(Block::default().borders(Borders::ALL).title("Friends"))
            .highlight_style(Style::default().add_modifier(Modifier::BOLD))
            .highlight_symbol("> "),
        area,
        &mut state,
    );
}

fn draw_conversation(frame: &mut Frame<'_>, app: &App, area: ratatui::layout::Rect) {
    let selected = app.selected_jid();
    let friend = selected.as_ref().and_then(|jid| app.friends.get(jid));
    let title = match (&selected, friend.and_then(|f| f.path)) {
        (Some(jid), Some(Path::Direct)) => format!("{jid} — direct"),
        (Some(jid), Some(Path::Server)) => format!("{jid} — through the servers"),
        (Some(jid), None) => jid.clone(),
        (None, _) => format!("{} — no friends yet: /add JID", app.me),
    };
    let lines: Vec<Line<'_>> = friend
        .map(|f| f.said.iter().map(said_line).collect())
        .unwrap_or_default();
    // The newest lines at the bottom: scroll past what does not fit.
    let height = area.height.saturating_sub(2) as usize;
    let skip = lines.len().saturating_sub(height);
    frame.render_widget(
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>())
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

fn said_line(said: &Said) -> Line<'_> {
    if !said.mine {
        return Line::from(vec![
            Span::styled("them: ", Style::default().fg(Color::Cyan)),
            Span::raw(said.body.as_str()),
        ]);
    }
    let state = match said.state {
        None => "sending",
        Some(DeliveryState::Queued) => "queued",
        Some(DeliveryState::Relayed) => "relayed",
        Some(DeliveryState::Delivered) => "delivered",
        Some(DeliveryState::Read) => "read",
    };
    Line::from(vec![
        Span::styled("me: ", Style::default().fg(Color::Yellow)),
        Span::raw(said.body.as_str()),
        Span::styled(format!("  [{state}]"), Style::default().fg(Color::DarkGray)),
    ])
}
