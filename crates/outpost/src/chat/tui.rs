//! The terminal interface of `outpost chat` (ratatui on crossterm): friends with presence,
//! unread counts and requests on the left, the conversation with each message's delivery
//! state on the right, the line being typed, and a status line that says which server the
//! client is on and why.
//!
//! Keys: Up/Down choose a friend or room; Enter sends the line there, or runs it when it
//! starts with `/` (`/add JID` asks or approves, `/remove JID`, `/join ROOM [NICK]`,
//! `/leave`, `/send FILE` to the friend shown, `/quit`); Esc or Ctrl-C quits. Files on
//! their way show in the conversation with a progress bar and the path they take. Opening a conversation fetches its history
//! from the archive and tells the friend its messages were read (XEP-0333).

use std::collections::{BTreeMap, BTreeSet};

use outpost_client::{
    Client, Command, DeliveryState, Event, Path, RosterItem, TransferPath, TransferState,
};
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
    /// Who said it, in a room.
    nick: Option<String>,
    body: String,
    id: String,
    state: Option<DeliveryState>,
}

#[derive(Default)]
struct Friend {
    /// A group chat room rather than a person.
    room: bool,
    /// Its history was asked for.
    history_asked: bool,
    item: Option<RosterItem>,
    available: bool,
    unread: usize,
    path: Option<Path>,
    said: Vec<Said>,
    /// Files to or from this friend, by transfer id.
    files: BTreeMap<String, FileView>,
}

/// A file on its way, as last reported.
struct FileView {
    name: String,
    size: u64,
    done: u64,
    state: TransferState,
    path: Option<TransferPath>,
    /// Where a received file was kept, or why it failed.
    note: Option<String>,
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
                let said = Said {
                    mine: false,
                    nick: None,
                    body,
                    id,
                    state: None,
                };
                let friend = self.friends.entry(from).or_default();
                friend.unread += 1;
                friend.said.push(said);
            }
            Event::Sent { to, body, id } => self.friends.entry(to).or_default().said.push(Said {
                mine: true,
                nick: None,
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
            Event::History { with, items, .. } => self.history(&with, items),
            Event::Joined { room, nick } => {
                self.notice = format!("in {room} as {nick}");
                self.friends.entry(room).or_default().room = true;
            }
            Event::Groupchat {
                room,
                from,
                body,
                id,
                mine,
            } => self.groupchat(room, from, body, id, mine),
            transfer @ Event::Transfer { .. } => self.transfer(transfer),
            Event::Error { text } => self.notice = text,
        }
    }

    /// A file's progress, shown in the conversation with whom it goes to or comes from.
    fn transfer(&mut self, event: Event) {
        let Event::Transfer {
            id,
            with,
            name,
            size,
            done,
            state,
            path,
            file,
            text,
        } = event
        else {
            return;
        };
        let note = file.or(text);
        let view = FileView {
            name,
            size,
            done,
            state,
            path,
            note,
        };
        self.friends.entry(with).or_default().files.insert(id, view);
    }

    /// Older messages from the archive go before what is shown, once each.
    fn history(&mut self, with: &str, items: Vec<outpost_client::HistoryItem>) {
        let friend = self.friends.entry(with.to_owned()).or_default();
        let older: Vec<Said> = items
            .into_iter()
            .filter(|i| i.id.is_empty() || !friend.said.iter().any(|s| s.id == i.id))
            .map(|i| Said {
                mine: i.mine,
                nick: None,
                body: i.body,
                id: i.id,
                state: None,
            })
            .collect();
        friend.said.splice(0..0, older);
    }

    fn groupchat(&mut self, room: String, from: String, body: String, id: String, mine: bool) {
        let friend = self.friends.entry(room).or_default();
        friend.room = true;
        if mine && let Some(said) = friend.said.iter_mut().find(|s| s.mine && s.id == id) {
            // The room reflected our message: everyone in it has it.
            said.state = Some(DeliveryState::Delivered);
            return;
        }
        if !mine {
            friend.unread += 1;
        }
        friend.said.push(Said {
            mine,
            nick: Some(from),
            body,
            id,
            state: mine.then_some(DeliveryState::Delivered),
        });
    }

    /// What looking at the selected conversation asks for: its history (once), and the
    /// read marker for what is new in it.
    fn opened(&mut self) -> Vec<Command> {
        self.ask_history()
            .into_iter()
            .chain(self.read_selected())
            .collect()
    }

    /// The selected conversation's history, asked for once.
    fn ask_history(&mut self) -> Option<Command> {
        let jid = self.selected_jid()?;
        let friend = self.friends.get_mut(&jid)?;
        if friend.room || friend.history_asked {
            return None;
        }
        friend.history_asked = true;
        Some(Command::History { with: jid })
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

    /// The user opened a conversation: its unread messages are read now (a room is
    /// told nothing).
    fn read_selected(&mut self) -> Option<Command> {
        let jid = self.selected_jid()?;
        let friend = self.friends.get_mut(&jid)?;
        if friend.unread == 0 {
            return None;
        }
        friend.unread = 0;
        if friend.room {
            return None;
        }
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
                ("join", false) => {
                    let (room, nick) = match jid.split_once(' ') {
                        Some((room, nick)) => (room.to_owned(), Some(nick.trim().to_owned())),
                        None => (jid, None),
                    };
                    Some(Command::Join { room, nick })
                }
                ("send", false) => {
                    let to = self.selected_jid().filter(|j| !self.friends[j].room)?;
                    Some(Command::SendFile { to, path: jid })
                }
                ("leave", _) => {
                    let room = self.selected_jid().filter(|j| self.friends[j].room)?;
                    self.friends.remove(&room);
                    self.selected = 0;
                    Some(Command::Leave { room })
                }
                _ => {
                    self.notice =
                        "commands: /add JID, /remove JID, /join ROOM [NICK], /leave, /send FILE, /quit"
                            .to_owned();
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
        let friend = self.friends.entry(to.clone()).or_default();
        friend.said.push(Said {
            mine: true,
            nick: None,
            body: line.to_owned(),
            id: id.clone(),
            state: None,
        });
        let (body, id) = (line.to_owned(), Some(id));
        Some(if friend.room {
            Command::Say { room: to, body, id }
        } else {
            Command::Send { to, body, id }
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
        let commands = tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    app.on_event(event);
                    app.opened()
                }
                None => return Ok(()),
            },
            key = keys.recv() => match key {
                Some(key) => on_key(&mut app, key),
                None => vec![Command::Quit],
            },
        };
        for command in commands {
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

fn on_key(app: &mut App, key: KeyEvent) -> Vec<Command> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    match key.code {
        KeyCode::Esc => vec![Command::Quit],
        KeyCode::Char('c') if ctrl => vec![Command::Quit],
        // Other control combinations type nothing.
        KeyCode::Char(c) if !ctrl => {
            app.input.push(c);
            Vec::new()
        }
        KeyCode::Backspace => {
            app.input.pop();
            Vec::new()
        }
        KeyCode::Enter => app.submit().into_iter().collect(),
        KeyCode::Up => {
            app.selected = app.selected.saturating_sub(1);
            app.opened()
        }
        KeyCode::Down => {
            app.selected = (app.selected + 1).min(app.friends.len().saturating_sub(1));
            app.opened()
        }
        _ => Vec::new(),
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
    // The end of a line longer than the box stays in view, with the cursor after it.
    let room = usize::from(input.width.saturating_sub(5));
    let typed: Vec<char> = app.input.chars().collect();
    let shown: String = typed[typed.len().saturating_sub(room)..].iter().collect();
    frame.render_widget(
        Paragraph::new(format!("> {shown}")).block(
            Block::default()
                .borders(Borders::ALL)
                .title(app.notice.as_str()),
        ),
        input,
    );
    let column = u16::try_from(shown.chars().count()).unwrap_or(u16::MAX);
    frame.set_cursor_position((
        input.x.saturating_add(3).saturating_add(column),
        input.y + 1,
    ));
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
            let dot = if f.room {
                Span::styled("# ", Style::default().fg(Color::Magenta))
            } else if f.available {
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
        .map(|f| {
            let said = f.said.iter().map(said_line);
            said.chain(f.files.values().map(file_line)).collect()
        })
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

/// `file NAME  [████░░░░░░]  40 %  direct`, then where it was kept or why it failed.
fn file_line(file: &FileView) -> Line<'_> {
    const WIDTH: u64 = 20;
    let percent = (file.done * 100)
        .checked_div(file.size)
        .unwrap_or(100)
        .min(100);
    let filled = usize::try_from(percent * WIDTH / 100).unwrap_or(0);
    let bar = format!(
        "{}{}",
        "█".repeat(filled),
        "░".repeat(WIDTH as usize - filled)
    );
    let state = match file.state {
        TransferState::Offered => "offered",
        TransferState::Sending => "sending",
        TransferState::Receiving => "receiving",
        TransferState::Complete => "done",
        TransferState::Failed => "failed",
    };
    let path = match file.path {
        Some(TransferPath::Direct) => " direct",
        Some(TransferPath::Proxy) => " via the site's proxy",
        Some(TransferPath::Upload) => " via upload",
        None => "",
    };
    let note = file
        .note
        .as_deref()
        .map(|n| format!(" — {n}"))
        .unwrap_or_default();
    Line::from(vec![
        Span::styled("file ", Style::default().fg(Color::Magenta)),
        Span::raw(file.name.as_str()),
        Span::raw(format!("  [{bar}] {percent:>3} % {state}{path}{note}")),
    ])
}

fn said_line(said: &Said) -> Line<'_> {
    if !said.mine {
        let who = said.nick.as_deref().unwrap_or("them");
        return Line::from(vec![
            Span::styled(format!("{who}: "), Style::default().fg(Color::Cyan)),
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
