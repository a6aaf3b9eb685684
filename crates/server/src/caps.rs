//! Entity capabilities (XEP-0115): which features the clients the server has seen
//! available support, learnt from the hash in their presence and checked before it is
//! believed. Personal eventing needs it: a client gets a node's events only if it
//! advertises `node+notify` (XEP-0163 §4.3).
//!
//! The registry knows every available client whose presence passed through the server (the
//! server's own users, and contacts on other servers whose presence reached them), with the
//! caps it announced. A hash seen for the first time is asked of the client that announced
//! it (disco#info on `node#ver`); its answer is hashed again (XEP-0115 §5.1) and cached only
//! if it matches, so nobody can teach the server a false feature list for a hash others
//! use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jid::{BareJid, FullJid};
use minidom::Element;
use outpost_proto::forms::Submitted;
use outpost_proto::stanza::{self, ns};
use sha1::Digest as _;

/// The capabilities namespace (XEP-0115).
pub(crate) const NS_CAPS: &str = "http://jabber.org/protocol/caps";
/// Verified hashes kept; beyond this the cache starts afresh (clients re-announce).
const KNOWN_MAX: usize = 10_000;
/// Questions about hashes that may wait for an answer at once.
const PENDING_MAX: usize = 10_000;

/// What a client announced in its presence (`<c node ver hash/>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Announced {
    pub(crate) node: String,
    pub(crate) ver: String,
    pub(crate) hash: String,
}

impl Announced {
    /// The `<c/>` of a presence stanza, if it has one with a hash this server can check.
    pub(crate) fn of(presence: &Element) -> Option<Announced> {
        let c = presence.get_child("c", NS_CAPS)?;
        let hash = c.attr("hash")?;
        if !matches!(hash, "sha-1" | "sha-256") {
            return None;
        }
        Some(Announced {
            node: c.attr("node")?.to_owned(),
            ver: c.attr("ver")?.to_owned(),
            hash: hash.to_owned(),
        })
    }

    fn key(&self) -> String {
        format!("{}|{}", self.hash, self.ver)
    }
}

/// A question asked about a hash, and whose nodes' last items the client gets once it is
/// answered.
struct Question {
    asked: FullJid,
    caps: Announced,
    owners: Vec<BareJid>,
}

/// An available client, what it announced, and whose last items it was sent since.
struct Client {
    jid: FullJid,
    caps: Option<Announced>,
    served: Vec<BareJid>,
}

/// The registry.
pub(crate) struct Caps {
    /// Verified feature lists by hash.
    known: Mutex<HashMap<String, Arc<[String]>>>,
    /// Available clients by account.
    seen: Mutex<HashMap<BareJid, Vec<Client>>>,
    /// Open questions by IQ id.
    pending: Mutex<HashMap<String, Question>>,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            known: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }
}

/// What to do about a client's available presence.
pub(crate) enum Learnt {
    /// Its features are known: send it the last items of these owners' nodes.
    Features(Arc<[String]>, Vec<BareJid>),
    /// Ask this question (an IQ to send); the answer comes to [`Caps::answer`].
    Ask(Element),
    /// It announced nothing checkable, or has been served all it asked for.
    Nothing,
}

impl Caps {
    /// A client is available with `caps`, and may get the last items of `owners`' nodes
    /// (itself, its contacts'): those it was not sent yet with these caps come back. `from`
    /// is the server's address the question, if any, comes from.
    pub(crate) fn available(
        &self,
        who: &FullJid,
        caps: Option<Announced>,
        from: &str,
        owners: Vec<BareJid>,
    ) -> Learnt {
        let owners = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let list = seen.entry(who.to_bare()).or_default();
            let client = match list.iter().position(|c| c.jid == *who) {
                Some(i) if list[i].caps == caps => &mut list[i],
                Some(i) => {
                    list[i].caps = caps.clone();
                    list[i].served.clear();
                    &mut list[i]
                }
                None => {
                    list.push(Client {
                        jid: who.clone(),
                        caps: caps.clone(),
                        served: Vec::new(),
                    });
                    list.last_mut().expect("just pushed")
                }
            };
            let new: Vec<BareJid> = owners
                .into_iter()
                .filter(|o| !client.served.contains(o))
                .collect();
            client.served.extend(new.iter().cloned());
            new
        };
        let Some(caps) = caps.filter(|_| !owners.is_empty()) else {
            return Learnt::Nothing;
        };
        if let Some(features) = self.known(&caps) {
            return Learnt::Features(features, owners);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= PENDING_MAX {
            return Learnt::Nothing;
        }
        let id = format!("caps-{}", crate::ids::random_id(12));
        let query = Element::builder("query", ns::DISCO_INFO)
            .attr(stanza::name("node"), format!("{}#{}", caps.node, caps.ver))
            .build();
        let iq = Element::builder("iq", ns::CLIENT)
            .attr(stanza::name("type"), "get")
            .attr(stanza::name("id"), id.as_str())
            .attr(stanza::name("from"), from)
            .attr(stanza::name("to"), who.as_str())
            .append(query)
            .build();
        pending.insert(
            id,
            Question {
                asked: who.clone(),
                caps,
                owners,
            },
        );
        Learnt::Ask(iq)
    }

    /// A client went unavailable.
    pub(crate) fn unavailable(&self, who: &FullJid) {
        let bare = who.to_bare();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = seen.get_mut(&bare) {
            list.retain(|c| c.jid != *who);
            if list.is_empty() {
                seen.remove(&bare);
            }
        }
    }

    /// A client whose session moves to another node: what that node needs to know of it
    /// (its verified features, whose last items it got), and this node forgets it.
    pub(crate) fn moving_out(&self, who: &FullJid) -> (Option<Arc<[String]>>, Vec<BareJid>) {
        let client = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let list = seen.get_mut(&who.to_bare());
            list.and_then(|l| {
                l.iter()
                    .position(|c| c.jid == *who)
                    .map(|i| l.swap_remove(i))
            })
        };
        self.unavailable(who);
        match client {
            Some(c) => (c.caps.as_ref().and_then(|a| self.known(a)), c.served),
            None => (None, Vec::new()),
        }
    }

    /// A client whose session moved here from another node of the cluster, which
    /// verified its features (trusted like this node's own answers).
    pub(crate) fn moved_in(
        &self,
        who: &FullJid,
        caps: Option<Announced>,
        features: Option<Arc<[String]>>,
        served: Vec<BareJid>,
    ) {
        if let (Some(caps), Some(features)) = (&caps, features) {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() >= KNOWN_MAX {
                known.clear();
            }
            known.entry(caps.key()).or_insert(features);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let list = seen.entry(who.to_bare()).or_default();
        list.retain(|c| c.jid != *who);
        list.push(Client {
            jid: who.clone(),
            caps,
            served,
        });
    }

    /// The available clients of an account the server knows of, with their verified
    /// features (`None` when unknown).
    pub(crate) fn clients(&self, bare: &BareJid) -> Vec<(FullJid, Option<Arc<[String]>>)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = seen.get(bare) else {
            return Vec::new();
        };
        list.iter()
            .map(|c| (c.jid.clone(), c.caps.as_ref().and_then(|a| self.known(a))))
            .collect()
    }

    fn known(&self, caps: &Announced) -> Option<Arc<[String]>> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(&caps.key()).cloned()
    }

    /// An IQ answer that may be for one of our questions: `None` when it is not; when it
    /// is, the client, its verified features and whose last items it gets, if its answer
    /// matches its hash.
    #[allow(clippy::type_complexity)]
    pub(crate) fn answer(
        &self,
        iq: &Element,
    ) -> Option<Option<(FullJid, Arc<[String]>, Vec<BareJid>)>> {
        let id = iq.attr("id")?;
        let question = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.remove(id)?
        };
        if iq.attr("from") != Some(question.asked.as_str()) || iq.attr("type") != Some("result") {
            return Some(None);
        }
        let Some(query) = iq.get_child("query", ns::DISCO_INFO) else {
            return Some(None);
        };
        if verification_hash(query, &question.caps.hash).as_deref()
            != Some(question.caps.ver.as_str())
        {
            return Some(None);
        }
        let features: Arc<[String]> = query
            .children()
            .filter(|c| c.is("feature", ns::DISCO_INFO))
            .filter_map(|c| c.attr("var").map(str::to_owned))
            .collect();
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= KNOWN_MAX {
            known.clear();
        }
        known.insert(question.caps.key(), features.clone());
        Some(Some((question.asked, features, question.owners)))
    }
}

/// The verification string's hash of a disco#info answer (XEP-0115 §5.1), base64.
fn verification_hash(query: &Element, hash: &str) -> Option<String> {
    let mut s = String::new();
    let mut identities: Vec<[&str; 4]> = query
        .children()
        .filter(|c| c.is("identity", ns::DISCO_INFO))
        .map(|c| {
            [
                c.attr("category").unwrap_or(""),
                c.attr("type").unwrap_or(""),
                c.attr_ns("http://www.w3.org/XML/1998/namespace", "lang")
                    .unwrap_or(""),
                c.attr("name").unwrap_or(""),
            ]
        })
        .collect();
    identities.sort();
    for i in identities {
        s.push_str(&i.join("/"));
        s.push('<');
    }
    let mut features: Vec<&str> = query
        .children()
        .filter(|c| c.is("feature", ns::DISCO_INFO))
        .filter_map(|c| c.attr("var"))
        .collect();
    features.sort_unstable();
    if features.windows(2).any(|w| w[0] == w[1]) {
        // §5.4: duplicate features make the answer unusable.
        return None;
    }
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    let mut forms: Vec<Submitted> = query.children().filter_map(Submitted::parse).collect();
    forms.sort_by(|a, b| a.form_type().cmp(&b.form_type()));
    for form in &forms {
        s.push_str(form.form_type().unwrap_or(""));
        s.push('<');
        let mut fields: Vec<&(String, Vec<String>)> = form
            .fields
            .iter()
            .filter(|(v, _)| v != "FORM_TYPE")
            .collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        for (var, values) in fields {
            s.push_str(var);
            s.push('<');
            let mut values: Vec<&String> = values.iter().collect();
            values.sort();
            for v in values {
                s.push_str(v);
                s.push('<');
            }
        }
    }
    Some(match hash {
        "sha-1" => B64.encode(sha1::Sha1::digest(s.as_bytes())),
        _ => B64.encode(sha2::Sha256::digest(s.as_bytes())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0115 §5.2 and §5.3: the examples' verification strings and hashes.
    #[test]
    fn the_xep_examples_hash_as_published() {
        let simple: Element = "<query xmlns='http://jabber.org/protocol/disco#info'>\
            <identity category='client' name='Exodus 0.9.1' type='pc'/>\
            <feature var='http://jabber.org/protocol/caps'/>\
            <feature var='http://jabber.org/protocol/disco#info'/>\
            <feature var='http://jabber.org/protocol/disco#items'/>\
            <feature var='http://jabber.org/protocol/muc'/></query>"
            .parse()
            .unwrap();
        assert_eq!(
            verification_hash(&simple, "sha-1").as_deref(),
            Some("QgayPKawpkPSDYmwT/WM94uAlu0=")
        );
        let complex: Element = "<query xmlns='http://jabber.org/protocol/disco#info'>\
            <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
            <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
            <feature var='http://jabber.org/protocol/caps'/>\
            <feature var='http://jabber.org/protocol/disco#info'/>\
            <feature var='http://jabber.org/protocol/disco#items'/>\
            <feature var='http://jabber.org/protocol/muc'/>\
            <x xmlns='jabber:x:data' type='result'>\
            <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
            <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
            <field var='os'><value>Mac</value></field>\
            <field var='os_version'><value>10.5.1</value></field>\
            <field var='software'><value>Psi</value></field>\
            <field var='software_version'><value>0.11</value></field></x></query>"
            .parse()
            .unwrap();
        assert_eq!(
            verification_hash(&complex, "sha-1").as_deref(),
            Some("q07IKJEyjvHSyhy//CH0CxmKi8w=")
        );
    }

    #[test]
    fn a_hash_is_believed_only_from_a_matching_answer() {
        let caps = Caps::default();
        let owners = |names: &[&str]| -> Vec<BareJid> {
            names.iter().map(|n| BareJid::new(n).unwrap()).collect()
        };
        let who = FullJid::new("bob@example.org/pc").unwrap();
        let announced = Announced {
            node: "http://example.org/client".into(),
            ver: "QgayPKawpkPSDYmwT/WM94uAlu0=".into(),
            hash: "sha-1".into(),
        };
        let Learnt::Ask(iq) = caps.available(
            &who,
            Some(announced.clone()),
            "example.org",
            owners(&["bob@example.org"]),
        ) else {
            panic!("an unknown hash is asked about");
        };
        assert_eq!(iq.attr("to"), Some("bob@example.org/pc"));
        let id = iq.attr("id").unwrap().to_owned();
        let answer = |id: &str, features: &str| -> Element {
            format!(
                "<iq xmlns='jabber:client' type='result' id='{id}' from='bob@example.org/pc'>\
                 <query xmlns='http://jabber.org/protocol/disco#info'>\
                 <identity category='client' name='Exodus 0.9.1' type='pc'/>{features}</query></iq>"
            )
            .parse()
            .unwrap()
        };
        // A false answer teaches nothing and closes the question.
        let lie = answer(&id, "<feature var='urn:xmpp:evil+notify'/>");
        assert!(matches!(caps.answer(&lie), Some(None)));
        assert!(caps.answer(&lie).is_none(), "the question is closed");
        // Bob's own items were promised already; alice's are new.
        let Learnt::Ask(iq) = caps.available(
            &who,
            Some(announced.clone()),
            "example.org",
            owners(&["bob@example.org", "alice@example.org"]),
        ) else {
            panic!("still unknown");
        };
        let truth = answer(
            iq.attr("id").unwrap(),
            "<feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/>",
        );
        let (jid, features, then) = caps.answer(&truth).unwrap().unwrap();
        assert_eq!((jid, then), (who.clone(), owners(&["alice@example.org"])));
        assert_eq!(features.len(), 4);
        // Known now, for everyone with that hash; each owner served once per caps.
        let other = FullJid::new("carol@example.org/x").unwrap();
        let carol = owners(&["carol@example.org"]);
        assert!(matches!(
            caps.available(&other, Some(announced.clone()), "example.org", carol.clone()),
            Learnt::Features(_, o) if o == carol
        ));
        assert!(matches!(
            caps.available(&other, Some(announced), "example.org", carol),
            Learnt::Nothing
        ));
        assert_eq!(caps.clients(&who.to_bare()).len(), 1);
        caps.unavailable(&who);
        assert!(caps.clients(&who.to_bare()).is_empty());
    }
}
