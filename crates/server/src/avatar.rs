//! Avatars both ways (XEP-0398): an avatar published with User Avatar (XEP-0084) is written
//! into the vCard (XEP-0153), one set in the vCard is published to the two avatar nodes,
//! and the user's presence carries the avatar's hash (`vcard-temp:x:update`), so clients of
//! either kind see the same picture.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jid::BareJid;
use minidom::Element;
use outpost_proto::stanza::{self, ns};
use outpost_store::AccessModel;
use sha1::Digest as _;
use tracing::warn;

use crate::delivery::Delivery;
use crate::pep;

pub(crate) const NS_DATA: &str = "urn:xmpp:avatar:data";
pub(crate) const NS_METADATA: &str = "urn:xmpp:avatar:metadata";
const NS_UPDATE: &str = "vcard-temp:x:update";

/// The vCard was stored: its photo goes to the avatar nodes (XEP-0398 §3.2), or the nodes
/// say there is none.
pub(crate) async fn from_vcard(d: &Delivery, owner: &BareJid, vcard: &Element) {
    let photo = vcard.get_child("PHOTO", ns::VCARD);
    let binval = photo
        .and_then(|p| p.get_child("BINVAL", ns::VCARD))
        .map(|b| b.text().split_whitespace().collect::<String>());
    let kind = photo
        .and_then(|p| p.get_child("TYPE", ns::VCARD))
        .map_or_else(|| "image/png".to_owned(), |t| t.text().trim().to_owned());
    let open = pep::config_for(AccessModel::Open, 1);
    let Some(data) = binval.and_then(|b| B64.decode(&b).ok()) else {
        // No photo: the metadata node, if there is one, says so.
        if !pep::own_items(d, owner, NS_METADATA).await.is_empty() {
            let empty = Element::builder("metadata", NS_METADATA).build();
            let id = crate::ids::random_id(12);
            let _ = pep::publish_for(d, owner, NS_METADATA, &id, &empty, open).await;
        }
        return;
    };
    let id = hex(&sha1::Sha1::digest(&data));
    let payload = Element::builder("data", NS_DATA)
        .append(B64.encode(&data))
        .build();
    let info = Element::builder("info", NS_METADATA)
        .attr(stanza::name("id"), id.as_str())
        .attr(stanza::name("bytes"), data.len().to_string())
        .attr(stanza::name("type"), kind)
        .build();
    let metadata = Element::builder("metadata", NS_METADATA)
        .append(info)
        .build();
    let done = match pep::publish_for(d, owner, NS_DATA, &id, &payload, open.clone()).await {
        Ok(()) => pep::publish_for(d, owner, NS_METADATA, &id, &metadata, open).await,
        Err(e) => Err(e),
    };
    if let Err(e) = done {
        warn!(condition = %e.condition, "cannot publish the vCard avatar");
    }
}

/// The user published avatar metadata with XEP-0084: the vCard gets the picture
/// (XEP-0398 §3.1), or loses it when the metadata is empty.
pub(crate) async fn to_vcard(d: &Delivery, owner: &BareJid, metadata: &Element) {
    let info = metadata.get_child("info", NS_METADATA);
    let photo = match info.and_then(|i| i.attr("id")) {
        Some(id) => {
            let data = d
                .store()
                .pep_item(owner.as_str(), NS_DATA, id)
                .await
                .ok()
                .flatten()
                .and_then(|item| item.payload.parse::<Element>().ok());
            let Some(data) = data else {
                // The data is published first by well-behaved clients; without it there
                // is nothing to copy.
                return;
            };
            let kind = info.and_then(|i| i.attr("type")).unwrap_or("image/png");
            Some(
                Element::builder("PHOTO", ns::VCARD)
                    .append(Element::builder("TYPE", ns::VCARD).append(kind).build())
                    .append(
                        Element::builder("BINVAL", ns::VCARD)
                            .append(data.text().trim())
                            .build(),
                    )
                    .build(),
            )
        }
        None => None,
    };
    let store = d.store();
    let mut vcard = store
        .vcard(owner.as_str())
        .await
        .ok()
        .flatten()
        .and_then(|text| text.parse::<Element>().ok())
        .unwrap_or_else(|| Element::builder("vCard", ns::VCARD).build());
    while vcard.remove_child("PHOTO", ns::VCARD).is_some() {}
    if let Some(photo) = photo {
        vcard.append_child(photo);
    }
    let mut text = Vec::new();
    if outpost_proto::xml::write_stanza(&vcard, &mut text).is_ok()
        && let Err(e) = store
            .set_vcard(owner.as_str(), &String::from_utf8_lossy(&text))
            .await
    {
        warn!(error = %e, "cannot write the avatar into the vCard");
    }
}

/// The hash of the user's avatar now: the id of the newest metadata's picture, empty when
/// the user has none (XEP-0153 §3.2).
pub(crate) async fn current_hash(d: &Delivery, owner: &BareJid) -> String {
    let items = d
        .store()
        .pep_items(owner.as_str(), NS_METADATA, Some(1))
        .await
        .unwrap_or_default();
    items
        .first()
        .and_then(|item| item.payload.parse::<Element>().ok())
        .and_then(|m| {
            m.get_child("info", NS_METADATA)
                .and_then(|i| i.attr("id"))
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Adds the avatar's hash to an available presence the client sent without one
/// (XEP-0398 §4).
pub(crate) fn stamp_presence(presence: &mut Element, hash: &str) {
    if presence.has_child("x", NS_UPDATE) {
        return;
    }
    let mut photo = Element::builder("photo", NS_UPDATE).build();
    if !hash.is_empty() {
        photo.append_text_node(hash);
    }
    presence.append_child(Element::builder("x", NS_UPDATE).append(photo).build());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
