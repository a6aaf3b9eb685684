//! Where a server is reached.

use std::fmt;

/// A server address, `HOST:PORT`: STARTTLS (RFC 6120 §5), except on ports 5223 and 443,
/// which by XEP-0368's convention speak TLS from the first byte. `tls://HOST:PORT` asks
/// for TLS from the first byte on any port, `starttls://HOST:PORT` for STARTTLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub direct_tls: bool,
}

impl Server {
    /// The server of a domain when none is given: the domain itself, port 5222.
    pub fn for_domain(domain: &str) -> Server {
        Server {
            host: domain.to_owned(),
            port: 5222,
            direct_tls: false,
        }
    }
}

impl Server {
    /// The server a `<see-other-host/>` names (RFC 6120 §4.9.3.19): a host, an IPv6
    /// address in brackets, either with a port or not (then 5222).
    pub fn from_see_other_host(value: &str) -> Option<Server> {
        let value = value.trim();
        let has_port = match value.strip_prefix('[') {
            Some(rest) => rest.contains("]:"),
            None => value.matches(':').count() == 1,
        };
        if has_port {
            return value.parse().ok();
        }
        let host = value.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty()).then(|| Server {
            host: host.to_owned(),
            port: 5222,
            direct_tls: false,
        })
    }
}

impl std::str::FromStr for Server {
    type Err = String;

    fn from_str(s: &str) -> Result<Server, String> {
        let (scheme, address) = match s.split_once("://") {
            Some((scheme, address)) => (Some(scheme), address),
            None => (None, s),
        };
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("{s}: expected HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s}: the port is not a number from 1 to 65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(format!("{s}: expected HOST:PORT"));
        }
        let direct_tls = match scheme {
            None => matches!(port, 5223 | 443),
            Some("tls") => true,
            Some("starttls") => false,
            Some(other) => return Err(format!("{s}: unknown scheme {other}:// (tls or starttls)")),
        };
        Ok(Server {
            host: host.to_owned(),
            port,
            direct_tls,
        })
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.direct_tls, matches!(self.port, 5223 | 443)) {
            (true, false) => f.write_str("tls://")?,
            (false, true) => f.write_str("starttls://")?,
            _ => {}
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Server;

    #[test]
    fn addresses_parse_with_their_tls_mode() {
        let s: Server = "chat.example:5222".parse().expect("parse");
        assert_eq!(
            (s.host.as_str(), s.port, s.direct_tls),
            ("chat.example", 5222, false)
        );
        let s: Server = "[::1]:5223".parse().expect("parse");
        assert_eq!((s.host.as_str(), s.direct_tls), ("::1", true));
        assert_eq!(s.to_string(), "[::1]:5223");
        let s: Server = "tls://127.0.0.1:40000".parse().expect("parse");
        assert!(s.direct_tls);
        assert_eq!(s.to_string(), "tls://127.0.0.1:40000");
        let s: Server = "starttls://h:5223".parse().expect("parse");
        assert!(!s.direct_tls);
        assert_eq!(s.to_string(), "starttls://h:5223");
        let other = |v: &str| Server::from_see_other_host(v).map(|s| s.to_string());
        assert_eq!(other("site1.test").as_deref(), Some("site1.test:5222"));
        assert_eq!(other("site1.test:5300").as_deref(), Some("site1.test:5300"));
        assert_eq!(
            other("[2001:db8::1]").as_deref(),
            Some("[2001:db8::1]:5222")
        );
        assert_eq!(
            other("[2001:db8::1]:5300").as_deref(),
            Some("[2001:db8::1]:5300")
        );
        assert_eq!(other("2001:db8::1").as_deref(), Some("[2001:db8::1]:5222"));
        assert_eq!(other(""), None);
        for bad in ["nohost", ":5222", "h:0", "h:99999", "h:x", "ws://h:1"] {
            assert!(bad.parse::<Server>().is_err(), "{bad}");
        }
    }
}
