//! Where the load goes and where it comes from: parsed base URLs ([`Endpoint`]), the pool
//! of loopback source addresses ([`SourcePool`]), and TCP connects bound to a chosen local
//! IP. Binding spreads sockets over 127.0.0.1..127.0.0.K, each with its own ~28,000
//! ephemeral ports, so a 100,000-socket run never runs out of ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use tokio::net::{TcpSocket, TcpStream};

/// One server to talk to, parsed from `http://host:port` (or `ws://host:port`).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The URL as given, for reports.
    pub url: String,
    /// `host:port`, sent as the `Host` header and used to build `ws://` URLs.
    pub authority: String,
    /// The resolved socket address, so connects skip DNS.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Parses and resolves a base URL. Only plain `http`/`ws` are supported (the tool
    /// measures the gateway, not a TLS terminator in front of it).
    pub async fn resolve(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .with_context(|| format!("{url}: only http:// and ws:// base URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or_default().to_string();
        if authority.is_empty() {
            bail!("{url}: missing host");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("resolving {with_port}"))?
            .next()
            .with_context(|| format!("{with_port} resolves to nothing"))?;
        Ok(Self {
            url: url.to_string(),
            authority,
            addr,
        })
    }

    /// Resolves every URL of a list, in order.
    pub async fn resolve_all(urls: &[String]) -> Result<Vec<Self>> {
        let mut out = Vec::with_capacity(urls.len());
        for u in urls {
            out.push(Self::resolve(u).await?);
        }
        Ok(out)
    }

    /// `ws://host:port{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.authority, path)
    }
}

/// Round-robin over local source addresses. Only used when the server is on loopback;
/// otherwise the kernel picks the source address.
#[derive(Debug)]
pub struct SourcePool {
    /// The addresses to bind to; empty means "don't bind".
    ips: Vec<IpAddr>,
    /// Next index to hand out.
    next: AtomicUsize,
}

impl SourcePool {
    /// 127.0.0.1 ..= 127.0.0.K, starting the round-robin at `start` so several client
    /// processes don't all begin on the same address. `k == 0` disables binding.
    pub fn loopback(k: usize, start: usize) -> Self {
        let ips = (1..=k.min(254))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
            .collect();
        Self {
            ips,
            next: AtomicUsize::new(start),
        }
    }

    /// The address to bind the next socket to, if any.
    pub fn next_for(&self, remote: &SocketAddr) -> Option<IpAddr> {
        if self.ips.is_empty() || !remote.ip().is_loopback() || !remote.is_ipv4() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.ips[i % self.ips.len()])
    }

    /// How many addresses are in the pool.
    pub fn len(&self) -> usize {
        self.ips.len()
    }

    /// True when binding is disabled.
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }
}

/// Source addresses needed so no address carries more than ~25,000 sockets (the default
/// ephemeral range is 32768–60999, about 28,000 ports per address).
pub fn auto_source_ips(sockets: usize) -> usize {
    sockets.div_ceil(25_000).clamp(1, 254)
}

/// Connects to `remote`, first binding to `local` when given. Nagle is off: every frame
/// the tool sends is latency-sensitive.
pub async fn connect(local: Option<IpAddr>, remote: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if remote.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = local {
        #[cfg(target_os = "linux")]
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(remote).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `IP_BIND_ADDRESS_NO_PORT`: bind only the address now and let `connect` pick the port
/// for the whole 4-tuple. Without it, `bind(ip:0)` must find a port no socket on that
/// address uses — TIME_WAIT leftovers of the previous run included — and gets slow (and
/// then fails) as the ephemeral range fills.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the descriptor belongs to `socket`, which outlives the call; the option value
    // points to a live c_int and the length is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_base_urls() {
        let e = Endpoint::resolve("http://127.0.0.1:8080/").await.unwrap();
        assert_eq!(e.authority, "127.0.0.1:8080");
        assert_eq!(e.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            e.ws_url("/v1/visitor/ws"),
            "ws://127.0.0.1:8080/v1/visitor/ws"
        );
        assert!(Endpoint::resolve("https://x").await.is_err());
    }

    #[test]
    fn source_pool_round_robins_on_loopback_only() {
        let pool = SourcePool::loopback(3, 0);
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ips: Vec<_> = (0..4)
            .map(|_| pool.next_for(&lo).unwrap().to_string())
            .collect();
        assert_eq!(ips, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]);
        assert!(pool.next_for(&"10.0.0.1:1".parse().unwrap()).is_none());
        assert_eq!(auto_source_ips(100_000), 4);
    }

    #[tokio::test]
    async fn binds_to_a_chosen_loopback_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let remote = listener.local_addr().unwrap();
        let local: IpAddr = "127.0.0.7".parse().unwrap();
        let (stream, accepted) = tokio::join!(connect(Some(local), remote), listener.accept());
        assert_eq!(stream.unwrap().local_addr().unwrap().ip(), local);
        assert_eq!(accepted.unwrap().1.ip(), local);
    }
}
