//! Origin allowlists (pure: CORS itself, which applies them, is `http::cors`).
//!
//! A list entry is an exact origin (`https://shop.example`, `http://localhost:3000`) or a
//! subdomain wildcard (`https://*.shop.example`, which does not match the apex). An empty
//! list allows any origin. A tenant's non-empty list replaces the global one.
//!
//! CORS is answered for every route by `http::cors`: the request's `Origin` is reflected when
//! some policy in the deployment allows it, so browsers can read even a tenant-specific 403.
//! The tenant-specific decision is made by the handler ([`OriginPolicy::check`]) once it
//! knows the tenant. WebSocket upgrades are not covered by CORS at all: the channels call
//! the same check before upgrading.

use axum::http::{header, HeaderMap};
use confab_protocol::{ApiError, ErrorCode};

/// Checks that a list entry is well-formed.
pub fn check_pattern(p: &str) -> Result<(), String> {
    let host = p
        .strip_prefix("http://")
        .or_else(|| p.strip_prefix("https://"));
    // A `*` only as the whole first label of a domain (`https://*` would match nothing).
    let ok = host.is_some_and(|h| {
        let named = h.strip_prefix("*.").unwrap_or(h);
        !named.is_empty()
            && !named.starts_with('.')
            && !named.contains(['/', '*'])
            && !named.contains(char::is_whitespace)
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{p:?} is not an origin (scheme://host[:port], no path; * allowed as the first label)"
        ))
    }
}

fn matches(pattern: &str, origin: &str) -> bool {
    if pattern.eq_ignore_ascii_case(origin) {
        return true;
    }
    let Some((scheme, rest)) = pattern.split_once("://*.") else {
        return false;
    };
    let Some((o_scheme, o_host)) = origin.split_once("://") else {
        return false;
    };
    // Compared as bytes: no slicing of client input at a position that might split a
    // character.
    let (host, suffix) = (o_host.as_bytes(), rest.as_bytes());
    scheme.eq_ignore_ascii_case(o_scheme)
        && host.len() > suffix.len() + 1
        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        && host[host.len() - suffix.len() - 1] == b'.'
}

/// One effective allowlist.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Empty = any origin.
    pub allowed: Vec<String>,
}

impl OriginPolicy {
    /// A tenant's policy: its own list, or the global one when its list is empty.
    pub fn for_tenant(global: &[String], tenant: &[String]) -> OriginPolicy {
        OriginPolicy {
            allowed: if tenant.is_empty() {
                global.to_vec()
            } else {
                tenant.to_vec()
            },
        }
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|p| matches(p, origin))
    }

    /// The request's `Origin`, if any, must be allowed. No `Origin` (server-to-server,
    /// curl) is allowed: the allowlist protects browsers' users, not the API.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match headers.get(header::ORIGIN) {
            None => Ok(()),
            Some(v) => match v.to_str() {
                Ok(o) if self.allows(o) => Ok(()),
                _ => Err(ApiError::new(
                    ErrorCode::OriginNotAllowed,
                    "this origin is not allowed to use this widget",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard() {
        let p = OriginPolicy {
            allowed: vec![
                "https://shop.example".into(),
                "https://*.brand.example".into(),
            ],
        };
        assert!(p.allows("https://shop.example"));
        assert!(p.allows("https://SHOP.example"));
        assert!(!p.allows("http://shop.example"));
        assert!(!p.allows("https://shop.example.evil"));
        assert!(p.allows("https://eu.brand.example"));
        assert!(!p.allows("https://brand.example"));
        assert!(!p.allows("https://evilbrand.example"));
        assert!(!p.allows("null"));
        assert!(!p.allows("https://é.brand.examplé"));
        assert!(!p.allows("https://ééééééééééééééé"));
        assert!(OriginPolicy::default().allows("https://anything.example"));
    }

    #[test]
    fn tenant_list_replaces_global() {
        let p =
            OriginPolicy::for_tenant(&["https://a.example".into()], &["https://b.example".into()]);
        assert!(!p.allows("https://a.example") && p.allows("https://b.example"));
        let p = OriginPolicy::for_tenant(&["https://a.example".into()], &[]);
        assert!(p.allows("https://a.example"));
    }

    #[test]
    fn patterns_are_checked() {
        assert!(check_pattern("https://a.example:8443").is_ok());
        assert!(check_pattern("a.example").is_err());
        assert!(check_pattern("https://a.example/").is_err());
        assert!(check_pattern("https://a.example/path").is_err());
        assert!(check_pattern("https://*.a.example").is_ok());
        for bad in [
            "https://*",
            "https://*.",
            "https://",
            "https://a.*.example",
            "https://*.*.x",
            "https://a b",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
