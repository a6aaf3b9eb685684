//! Data forms (XEP-0004): reading what a client submits and writing the forms the server
//! offers. Only what services need: fields by `var`, each with its values, and the
//! hidden `FORM_TYPE` (XEP-0068) that says which form it is.

use minidom::Element;

use crate::stanza::{self, ns};

/// A submitted form (`<x xmlns='jabber:x:data' type='submit'/>`), its fields in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Submitted {
    pub fields: Vec<(String, Vec<String>)>,
}

impl Submitted {
    /// Reads the form in `el`, if `el` is one. A form of type `cancel` has no fields.
    pub fn parse(el: &Element) -> Option<Submitted> {
        if !el.is("x", ns::DATA_FORMS) {
            return None;
        }
        let fields = el
            .children()
            .filter(|c| c.is("field", ns::DATA_FORMS))
            .filter_map(|f| {
                let var = f.attr("var")?.to_owned();
                let values = f
                    .children()
                    .filter(|v| v.is("value", ns::DATA_FORMS))
                    .map(Element::text)
                    .collect();
                Some((var, values))
            })
            .collect();
        Some(Submitted { fields })
    }

    /// The hidden `FORM_TYPE`, if given.
    pub fn form_type(&self) -> Option<&str> {
        self.first("FORM_TYPE")
    }

    /// Every value of a field.
    pub fn values(&self, var: &str) -> Option<&[String]> {
        self.fields
            .iter()
            .find(|(v, _)| v == var)
            .map(|(_, values)| values.as_slice())
    }

    /// The first value of a field (most fields have one).
    pub fn first(&self, var: &str) -> Option<&str> {
        self.values(var)?.first().map(String::as_str)
    }

    /// A boolean field (XEP-0004 §3.3: `1`/`true` or `0`/`false`); `Err` with the text when
    /// it is neither.
    pub fn boolean(&self, var: &str) -> Option<Result<bool, String>> {
        self.first(var).map(|v| match v.trim() {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            other => Err(other.to_owned()),
        })
    }
}

/// A form the server offers or reports, built field by field.
pub struct Form {
    el: Element,
}

impl Form {
    /// A form of `kind` (`form`, `result`, `submit`) with its hidden `FORM_TYPE`.
    pub fn new(kind: &str, form_type: &str) -> Form {
        let mut el = Element::builder("x", ns::DATA_FORMS)
            .attr(stanza::name("type"), kind)
            .build();
        el.append_child(field("FORM_TYPE", Some("hidden"), None, &[form_type]));
        Form { el }
    }

    /// Adds a field with a type, a label and values.
    pub fn field(mut self, var: &str, kind: &str, label: Option<&str>, values: &[&str]) -> Form {
        self.el.append_child(field(var, Some(kind), label, values));
        self
    }

    /// Adds a list field with its options, as (value, label) pairs.
    pub fn list(
        mut self,
        var: &str,
        kind: &str,
        label: &str,
        values: &[&str],
        options: &[(&str, &str)],
    ) -> Form {
        let mut f = field(var, Some(kind), Some(label), values);
        for (value, label) in options {
            f.append_child(
                Element::builder("option", ns::DATA_FORMS)
                    .attr(stanza::name("label"), *label)
                    .append(
                        Element::builder("value", ns::DATA_FORMS)
                            .append(*value)
                            .build(),
                    )
                    .build(),
            );
        }
        self.el.append_child(f);
        self
    }

    pub fn build(self) -> Element {
        self.el
    }
}

fn field(var: &str, kind: Option<&str>, label: Option<&str>, values: &[&str]) -> Element {
    let mut f = Element::builder("field", ns::DATA_FORMS).attr(stanza::name("var"), var);
    if let Some(kind) = kind {
        f = f.attr(stanza::name("type"), kind);
    }
    if let Some(label) = label {
        f = f.attr(stanza::name("label"), label);
    }
    for v in values {
        f = f.append(Element::builder("value", ns::DATA_FORMS).append(*v).build());
    }
    f.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes() {
        let form = Form::new("submit", "urn:xmpp:mam:2")
            .field("with", "jid-single", None, &["juliet@capulet.lit"])
            .field("ids", "list-multi", Some("Ids"), &["a", "b"])
            .field("flag", "boolean", None, &["1"])
            .field("bad", "boolean", None, &["maybe"])
            .build();
        let read = Submitted::parse(&form).unwrap();
        assert_eq!(read.form_type(), Some("urn:xmpp:mam:2"));
        assert_eq!(read.first("with"), Some("juliet@capulet.lit"));
        assert_eq!(
            read.values("ids").unwrap(),
            ["a".to_owned(), "b".to_owned()]
        );
        assert_eq!(read.boolean("flag"), Some(Ok(true)));
        assert_eq!(read.boolean("bad"), Some(Err("maybe".to_owned())));
        assert_eq!(read.first("absent"), None);
        let not_a_form = Element::builder("query", ns::DISCO_INFO).build();
        assert!(Submitted::parse(&not_a_form).is_none());
    }
}
