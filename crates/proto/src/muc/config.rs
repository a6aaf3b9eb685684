//! A room's configuration (XEP-0045 §10.2), affiliations and roles, and the forms they are
//! read from and shown in.

use minidom::Element;

use crate::forms::{Form, Submitted};

pub(crate) const ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
pub(crate) const ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";

/// A user's long-lived standing in a room (XEP-0045 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Owner => "owner",
            Affiliation::Admin => "admin",
            Affiliation::Member => "member",
            Affiliation::None => "none",
            Affiliation::Outcast => "outcast",
        }
    }

    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "owner" => Affiliation::Owner,
            "admin" => Affiliation::Admin,
            "member" => Affiliation::Member,
            "none" => Affiliation::None,
            "outcast" => Affiliation::Outcast,
            _ => return None,
        })
    }
}

/// An occupant's standing in the room now (XEP-0045 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Moderator => "moderator",
            Role::Participant => "participant",
            Role::Visitor => "visitor",
            Role::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "moderator" => Role::Moderator,
            "participant" => Role::Participant,
            "visitor" => Role::Visitor,
            "none" => Role::None,
            _ => return None,
        })
    }
}

/// Who may send private messages to occupants (`muc#roomconfig_allowpm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    Nobody,
}

impl AllowPm {
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::Nobody => "none",
        }
    }

    fn parse(s: &str) -> Option<AllowPm> {
        Some(match s {
            "anyone" => AllowPm::Anyone,
            "participants" => AllowPm::Participants,
            "moderators" => AllowPm::Moderators,
            "none" => AllowPm::Nobody,
            _ => return None,
        })
    }

    /// Whether an occupant with `role` may send one.
    pub(crate) fn allows(self, role: Role) -> bool {
        match self {
            AllowPm::Anyone => role > Role::None,
            AllowPm::Participants => role >= Role::Participant,
            AllowPm::Moderators => role == Role::Moderator,
            AllowPm::Nobody => false,
        }
    }
}

/// How a room is set up (XEP-0045 §10.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    /// Kept when the last occupant leaves (and across restarts).
    pub persistent: bool,
    /// Listed in the service's room list.
    pub public: bool,
    pub members_only: bool,
    /// Only participants (not visitors) speak.
    pub moderated: bool,
    /// A password to enter; empty for none.
    pub password: String,
    /// Everyone sees occupants' real JIDs (`whois` = anyone), or only moderators do.
    pub non_anonymous: bool,
    /// Most occupants; 0 for no limit.
    pub max_users: u32,
    /// Occupants (not only moderators) may change the subject.
    pub change_subject: bool,
    pub allow_invites: bool,
    pub allow_pm: AllowPm,
    /// Messages go into the room's archive (XEP-0313), queryable by occupants.
    pub archive: bool,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: String::new(),
            non_anonymous: false,
            max_users: 0,
            change_subject: false,
            allow_invites: false,
            allow_pm: AllowPm::Anyone,
            archive: true,
        }
    }
}

fn field(name: &str) -> String {
    format!("muc#roomconfig_{name}")
}

fn flag(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

impl RoomConfig {
    /// The configuration as `(key, value)` pairs, for storage.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = [
            ("roomname", self.name.clone()),
            ("roomdesc", self.description.clone()),
            ("persistentroom", flag(self.persistent).to_owned()),
            ("publicroom", flag(self.public).to_owned()),
            ("membersonly", flag(self.members_only).to_owned()),
            ("moderatedroom", flag(self.moderated).to_owned()),
            ("roomsecret", self.password.clone()),
            (
                "whois",
                if self.non_anonymous {
                    "anyone"
                } else {
                    "moderators"
                }
                .to_owned(),
            ),
            ("maxusers", self.max_users.to_string()),
            ("changesubject", flag(self.change_subject).to_owned()),
            ("allowinvites", flag(self.allow_invites).to_owned()),
            ("allowpm", self.allow_pm.as_str().to_owned()),
            ("enablearchiving", flag(self.archive).to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        out.sort();
        out
    }

    /// A configuration read back from storage; unknown or bad pairs keep the default.
    pub fn from_pairs(pairs: &[(String, String)]) -> RoomConfig {
        let fields = pairs
            .iter()
            .map(|(k, v)| (field(k), vec![v.clone()]))
            .collect();
        let mut c = RoomConfig::default();
        let _ = c.apply(&Submitted { fields });
        c
    }

    /// Applies a submitted configuration form; fields not in it keep their value. `Err`
    /// names a field whose value makes no sense.
    pub fn apply(&mut self, form: &Submitted) -> Result<(), String> {
        let text = |name: &str| form.first(&field(name)).map(str::to_owned);
        let boolean = |name: &str| -> Result<Option<bool>, String> {
            form.boolean(&field(name))
                .transpose()
                .map_err(|v| format!("{}: `{v}`", field(name)))
        };
        let mut next = self.clone();
        if let Some(v) = text("roomname") {
            next.name = v;
        }
        if let Some(v) = text("roomdesc") {
            next.description = v;
        }
        for (name, slot) in [
            ("persistentroom", &mut next.persistent),
            ("publicroom", &mut next.public),
            ("membersonly", &mut next.members_only),
            ("moderatedroom", &mut next.moderated),
            ("changesubject", &mut next.change_subject),
            ("allowinvites", &mut next.allow_invites),
            ("enablearchiving", &mut next.archive),
        ] {
            if let Some(b) = boolean(name)? {
                *slot = b;
            }
        }
        if let Some(v) = text("roomsecret") {
            next.password = v;
        }
        if boolean("passwordprotectedroom")? == Some(false) {
            next.password.clear();
        }
        if let Some(v) = text("whois") {
            next.non_anonymous = match v.as_str() {
                "anyone" => true,
                "moderators" => false,
                other => return Err(format!("{}: `{other}`", field("whois"))),
            };
        }
        if let Some(v) = text("maxusers") {
            next.max_users = match v.trim() {
                "" | "none" => 0,
                n => n
                    .parse()
                    .map_err(|_| format!("{}: `{n}`", field("maxusers")))?,
            };
        }
        if let Some(v) = text("allowpm") {
            next.allow_pm =
                AllowPm::parse(&v).ok_or_else(|| format!("{}: `{v}`", field("allowpm")))?;
        }
        *self = next;
        Ok(())
    }

    /// The configuration form with the room's values (XEP-0045 §10.2).
    pub fn form(&self) -> Element {
        let max = self.max_users.to_string();
        let form = Form::new("form", ROOMCONFIG)
            .field(
                &field("roomname"),
                "text-single",
                Some("Name"),
                &[&self.name],
            )
            .field(
                &field("roomdesc"),
                "text-single",
                Some("Description"),
                &[&self.description],
            )
            .field(
                &field("persistentroom"),
                "boolean",
                Some("Keep the room when empty"),
                &[flag(self.persistent)],
            )
            .field(
                &field("publicroom"),
                "boolean",
                Some("List the room publicly"),
                &[flag(self.public)],
            )
            .field(
                &field("membersonly"),
                "boolean",
                Some("Members only"),
                &[flag(self.members_only)],
            )
            .field(
                &field("moderatedroom"),
                "boolean",
                Some("Only participants speak"),
                &[flag(self.moderated)],
            )
            .field(
                &field("passwordprotectedroom"),
                "boolean",
                Some("Password required"),
                &[flag(!self.password.is_empty())],
            )
            .field(
                &field("roomsecret"),
                "text-private",
                Some("Password"),
                &[&self.password],
            )
            .list(
                &field("whois"),
                "list-single",
                "Who sees real addresses",
                &[if self.non_anonymous {
                    "anyone"
                } else {
                    "moderators"
                }],
                &[("moderators", "Moderators"), ("anyone", "Anyone")],
            )
            .field(
                &field("maxusers"),
                "text-single",
                Some("Most occupants (0: no limit)"),
                &[&max],
            )
            .field(
                &field("changesubject"),
                "boolean",
                Some("Occupants may change the subject"),
                &[flag(self.change_subject)],
            )
            .field(
                &field("allowinvites"),
                "boolean",
                Some("Occupants may invite"),
                &[flag(self.allow_invites)],
            )
            .list(
                &field("allowpm"),
                "list-single",
                "Who may send private messages",
                &[self.allow_pm.as_str()],
                &[
                    ("anyone", "Anyone"),
                    ("participants", "Participants"),
                    ("moderators", "Moderators"),
                    ("none", "Nobody"),
                ],
            )
            .field(
                &field("enablearchiving"),
                "boolean",
                Some("Archive messages"),
                &[flag(self.archive)],
            );
        form.build()
    }

    /// The disco#info features describing the room (XEP-0045 §6.4).
    pub fn features(&self) -> Vec<&'static str> {
        let pick = |b: bool, yes: &'static str, no: &'static str| if b { yes } else { no };
        vec![
            pick(self.persistent, "muc_persistent", "muc_temporary"),
            pick(self.public, "muc_public", "muc_hidden"),
            pick(self.members_only, "muc_membersonly", "muc_open"),
            pick(self.moderated, "muc_moderated", "muc_unmoderated"),
            pick(
                self.password.is_empty(),
                "muc_unsecured",
                "muc_passwordprotected",
            ),
            pick(self.non_anonymous, "muc_nonanonymous", "muc_semianonymous"),
        ]
    }
}
