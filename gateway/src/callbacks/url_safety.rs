//! Which callback URLs the gateway will call: `https` (or `http` where a
//! route allows it), a host on the route's allowlist, and — after DNS
//! resolution — only global addresses, unless the route allows private ones
//! for local runs.
//!
//! The check of the resolved addresses is made where the connection is made:
//! [`SafeResolver`] is the delivery client's resolver, so the addresses it
//! checked are the ones connected to (DNS rebinding cannot switch them in
//! between). A URL with an IP literal is never resolved and is checked as it
//! is written.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a URL.
    #[error("the callback URL is not an absolute URL: {0}")]
    Malformed(String),
    /// Not `https` (or `http` where allowed).
    #[error("the callback URL's scheme {0:?} is not allowed ({1})")]
    Scheme(String, &'static str),
    /// User name or password in the URL.
    #[error("the callback URL may not carry credentials")]
    Credentials,
    /// The host is not on the route's allowlist.
    #[error("the callback URL's host {0:?} is not on the route's allow_hosts")]
    Host(String),
    /// The host is or resolves to an address that is not global.
    #[error("the callback URL's host {0:?} is or resolves to {1}, which is not a public address")]
    Address(String, IpAddr),
    /// The host could not be resolved.
    #[error("the callback URL's host {0:?} could not be resolved")]
    Unresolved(String),
}

/// One entry of `allow_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This host exactly (lower case; an IP literal without brackets).
    Exact(String),
    /// Any subdomain of this domain (`*.example.org`: `a.example.org`,
    /// `a.b.example.org`, not `example.org`).
    Subdomains(String),
}

impl HostPattern {
    /// Parses `hooks.example.com`, `*.example.org`, `127.0.0.1` or `::1`.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn parse(pattern: &str) -> Result<Self, &'static str> {
        let lower = pattern.trim().to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, lower),
        };
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .map_or(name.clone(), str::to_owned);
        let valid = !name.is_empty()
            && (name.parse::<IpAddr>().is_ok()
                || name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }));
        if !valid {
            return Err("not a host name, an IP address or *.<domain>");
        }
        if wild && name.parse::<IpAddr>().is_ok() {
            return Err("a wildcard needs a domain");
        }
        Ok(if wild {
            Self::Subdomains(name)
        } else {
            Self::Exact(name)
        })
    }

    /// Whether `host` (lower case, IPv6 without brackets) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => host == name,
            Self::Subdomains(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

/// Who a route may call back.
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    /// The hosts a client's URL may name.
    pub allow_hosts: Vec<HostPattern>,
    /// Plain `http` too.
    pub allow_http: bool,
    /// Non-global addresses too.
    pub allow_private: bool,
}

impl UrlPolicy {
    /// A client's `Callback-URL`, checked without resolving it: scheme,
    /// credentials, the allowlist, and an IP literal's address.
    ///
    /// # Errors
    /// [`Refused`] saying why.
    pub fn check(&self, raw: &str) -> Result<Url, Refused> {
        let url = self.check_fixed(raw)?;
        let host = host_text(&url);
        if !self.allow_hosts.iter().any(|p| p.matches(&host)) {
            return Err(Refused::Host(host));
        }
        Ok(url)
    }

    /// A URL (a route's fixed one, or a client's) checked as for
    /// [`UrlPolicy::check`] but for the allowlist.
    ///
    /// # Errors
    /// [`Refused`] saying why.
    pub fn check_fixed(&self, raw: &str) -> Result<Url, Refused> {
        let url = Url::parse(raw.trim()).map_err(|e| Refused::Malformed(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => {
                let hint = if self.allow_http {
                    "https or http"
                } else {
                    "https only"
                };
                return Err(Refused::Scheme(other.to_owned(), hint));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused::Credentials);
        }
        self.check_literal(&url)?;
        Ok(url)
    }

    /// The address of a URL whose host is an IP literal; a URL with no host
    /// is malformed.
    ///
    /// # Errors
    /// [`Refused`] for an address that is not global (unless allowed).
    pub fn check_literal(&self, url: &Url) -> Result<(), Refused> {
        let ip = match url.host() {
            None => return Err(Refused::Malformed("no host".into())),
            Some(Host::Domain(_)) => return Ok(()),
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        };
        self.check_address(&host_text(url), ip)
    }

    /// `ip`, an address `host` is or resolves to.
    ///
    /// # Errors
    /// [`Refused::Address`] when it is not global and the route does not
    /// allow private addresses.
    pub fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        if self.allow_private || is_global(ip) {
            Ok(())
        } else {
            Err(Refused::Address(host.to_owned(), ip))
        }
    }

    /// Resolves a checked URL's host name (within `within`) and checks every
    /// address it resolves to; nothing to do for an IP literal or a route
    /// that allows private addresses. At request time, so that a refused
    /// address is answered at once; the delivery checks again as it connects.
    ///
    /// # Errors
    /// [`Refused`] when an address is refused or the name does not resolve.
    pub async fn check_resolved(&self, url: &Url, within: Duration) -> Result<(), Refused> {
        let Some(Host::Domain(name)) = url.host() else {
            return Ok(());
        };
        if self.allow_private {
            return Ok(());
        }
        let addrs = resolve(name, within).await?;
        for addr in addrs {
            self.check_address(name, addr.ip())?;
        }
        Ok(())
    }
}

/// Every address `name` resolves to; none is an error.
async fn resolve(name: &str, within: Duration) -> Result<Vec<SocketAddr>, Refused> {
    let unresolved = || Refused::Unresolved(name.to_owned());
    let found = tokio::time::timeout(within, tokio::net::lookup_host((name, 0)))
        .await
        .map_err(|_| unresolved())?
        .map_err(|_| unresolved())?;
    let addrs: Vec<SocketAddr> = found.collect();
    if addrs.is_empty() {
        return Err(unresolved());
    }
    Ok(addrs)
}

/// The URL's host as the allowlist sees it: lower case, IPv6 without brackets.
fn host_text(url: &Url) -> String {
    match url.host() {
        Some(Host::Ipv6(ip)) => ip.to_string(),
        Some(host) => host.to_string().to_ascii_lowercase(),
        None => String::new(),
    }
}

/// The delivery client's resolver: resolves a name and refuses it when any
/// of its addresses is not global, so that the connection goes to a checked
/// address only.
#[derive(Debug, Clone, Copy)]
pub struct SafeResolver {
    /// How long a resolution may take.
    pub within: Duration,
}

impl reqwest::dns::Resolve for SafeResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let within = self.within;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs = resolve(&host, within).await?;
            let strict = UrlPolicy::default();
            for addr in &addrs {
                strict.check_address(&host, addr.ip())?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The [`Refused`] among the causes of an error (a connection the
/// [`SafeResolver`] refused), if any.
pub fn refused_in(error: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        source = e.source();
    }
    None
}

/// Whether `ip` is a global unicast address: not private, loopback,
/// link-local, unspecified, multicast, broadcast, shared (CGNAT),
/// documentation, benchmarking or reserved; an IPv6 address that embeds an
/// IPv4 one (mapped, NAT64, 6to4) is judged by that.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_global_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_global_v4(embedded(s[1], s[2]));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || s[0..6] == [0, 0, 0, 0, 0, 0]
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        || (s[0] == 0x2001 && s[1] < 0x0200)
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str]) -> UrlPolicy {
        UrlPolicy {
            allow_hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            ..UrlPolicy::default()
        }
    }

    #[test]
    fn only_https_to_listed_hosts() {
        let p = policy(&["hooks.example.com", "*.example.org"]);
        assert!(p.check("https://hooks.example.com/in").is_ok());
        assert!(p.check("https://HOOKS.example.com:8443/in?x=1").is_ok());
        assert!(p.check("https://a.example.org/").is_ok());
        assert!(p.check("https://a.b.example.org/").is_ok());
        assert!(matches!(
            p.check("https://example.org/"),
            Err(Refused::Host(_))
        ));
        assert!(matches!(
            p.check("https://badexample.org/"),
            Err(Refused::Host(_))
        ));
        assert!(matches!(
            p.check("https://evil.com/"),
            Err(Refused::Host(_))
        ));
        assert!(matches!(
            p.check("https://hooks.example.com.evil.com/"),
            Err(Refused::Host(_))
        ));
        assert!(matches!(
            p.check("http://hooks.example.com/"),
            Err(Refused::Scheme(..))
        ));
        assert!(matches!(
            p.check("ftp://hooks.example.com/"),
            Err(Refused::Scheme(..))
        ));
        assert!(matches!(
            p.check("https://u:p@hooks.example.com/"),
            Err(Refused::Credentials)
        ));
        assert!(matches!(p.check("not a url"), Err(Refused::Malformed(_))));
        assert!(matches!(p.check("/relative"), Err(Refused::Malformed(_))));
    }

    #[test]
    fn http_and_private_addresses_only_where_allowed() {
        let mut p = policy(&["127.0.0.1", "localhost", "::1"]);
        assert!(matches!(
            p.check("http://127.0.0.1:9/"),
            Err(Refused::Scheme(..))
        ));
        p.allow_http = true;
        assert!(matches!(
            p.check("http://127.0.0.1:9/"),
            Err(Refused::Address(_, ip)) if ip == IpAddr::from([127, 0, 0, 1])
        ));
        assert!(matches!(
            p.check("http://[::1]:9/"),
            Err(Refused::Address(..))
        ));
        // A name is resolved later, not here.
        assert!(p.check("http://localhost:9/").is_ok());
        p.allow_private = true;
        assert!(p.check("http://127.0.0.1:9/").is_ok());
        assert!(p.check("http://[::1]:9/").is_ok());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let p = UrlPolicy {
            allow_http: true,
            ..policy(&["localhost"])
        };
        let url = p.check("http://localhost:9/").unwrap();
        let refused = p.check_resolved(&url, Duration::from_secs(5)).await;
        assert!(matches!(refused, Err(Refused::Address(..))), "{refused:?}");
        let open = UrlPolicy {
            allow_private: true,
            ..p
        };
        assert!(
            open.check_resolved(&url, Duration::from_secs(5))
                .await
                .is_ok()
        );
    }

    /// The client's resolver refuses a name of a loopback address as the
    /// connection is made: nothing connects.
    #[tokio::test]
    async fn the_resolver_refuses_a_private_address_as_it_connects() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(SafeResolver {
                within: Duration::from_secs(5),
            }))
            .build()
            .unwrap();
        let error = client
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(refused_in(&error), Some(Refused::Address(..))),
            "{error:?}"
        );
        let accepted = listener.accept();
        assert!(
            matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "nothing connected: {accepted:?}"
        );
    }

    #[test]
    fn non_global_addresses() {
        for refused in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:0a00:0001::",
            "::7f00:1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(!is_global(ip), "{refused} should be refused");
        }
        for allowed in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert!(is_global(ip), "{allowed} should be allowed");
        }
    }

    #[test]
    fn host_patterns() {
        assert!(HostPattern::parse("*.1.2.3.4").is_err());
        assert!(HostPattern::parse("").is_err());
        assert!(HostPattern::parse("a b").is_err());
        assert!(HostPattern::parse("*.").is_err());
        assert_eq!(
            HostPattern::parse("[::1]").unwrap(),
            HostPattern::Exact("::1".into())
        );
    }
}
