//! TCP congestion control per listener (`runtime.tcp_congestion`, or a
//! listener's own `tcp_congestion`).
//!
//! Why a POP3 server cares: BBR paces every connection, and where the
//! sending interface has no `fq` qdisc (loopback never has; its qdisc is
//! `noqueue`) the kernel paces with a timer per burst. Measured on this
//! project's 2-vCPU machine, cubic on the server's listener instead of BBR
//! cut the server CPU per MiB of RETR by 20–33 % (docs/benchmarks.md, "TCP
//! congestion control"). A listener that serves loopback or LAN clients (a
//! TLS proxy, webmail, a local fetchmail) can keep cubic while the machine's
//! default stays BBR for everything else. Linux copies a listening socket's
//! congestion control to every connection it accepts, so one `setsockopt`
//! per listener is enough.

use std::os::fd::RawFd;

/// The kernel's limit on an algorithm's name, NUL included (TCP_CA_NAME_MAX).
const NAME_MAX: usize = 16;

const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";
const ALLOWED: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";
/// The system-wide default (sysctl net.ipv4.tcp_congestion_control).
pub const DEFAULT: &str = "/proc/sys/net/ipv4/tcp_congestion_control";

/// Why an algorithm could not be set; the text names what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum CongestionError {
    /// The kernel has no such algorithm (ENOENT): a typo, or a module that
    /// is not built or could not be loaded.
    #[error(
        "TCP congestion control \"{name}\" is not available in this kernel (loaded: {available}; \
         a module tcp_{name} is loaded on demand only when it exists and pop3sd starts with CAP_NET_ADMIN)"
    )]
    NotAvailable { name: String, available: String },
    /// Only CAP_NET_ADMIN may pick algorithms outside the allowed list (EPERM).
    #[error(
        "TCP congestion control \"{name}\" is not in net.ipv4.tcp_allowed_congestion_control \
         ({allowed}) and pop3sd lacks CAP_NET_ADMIN: add it with sysctl -w \
         net.ipv4.tcp_allowed_congestion_control=\"{allowed} {name}\""
    )]
    NotAllowed { name: String, allowed: String },
    /// Anything else setsockopt refused.
    #[error("TCP congestion control \"{name}\": {source}")]
    Other {
        name: String,
        source: std::io::Error,
    },
}

/// Checks an algorithm's name as the kernel would take it, so that a typo
/// is a configuration error rather than a failed bind.
pub fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= NAME_MAX {
        return Err(format!(
            "\"{name}\" must be 1 to {} characters",
            NAME_MAX - 1
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "\"{name}\" is not an algorithm name (letters, digits, '_' and '-'; e.g. \"cubic\", \"bbr\", \"reno\")"
        ));
    }
    Ok(())
}

fn proc_list(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Sets `name` on a socket (a listener: the connections it accepts inherit it).
pub fn set(fd: RawFd, name: &str) -> Result<(), CongestionError> {
    // SAFETY: `fd` is a socket the caller owns for the duration of the call;
    // the option value is `name`'s bytes with their exact length, which the
    // kernel copies before returning.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let source = std::io::Error::last_os_error();
    let name = name.to_string();
    Err(match source.raw_os_error() {
        Some(libc::ENOENT) => CongestionError::NotAvailable {
            name,
            available: proc_list(AVAILABLE),
        },
        Some(libc::EPERM) => CongestionError::NotAllowed {
            name,
            allowed: proc_list(ALLOWED),
        },
        _ => CongestionError::Other { name, source },
    })
}

/// The algorithm a socket uses (for the start-up log and tests).
pub fn get(fd: RawFd) -> std::io::Result<String> {
    let mut buf = [0u8; NAME_MAX];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`, which is
    // that long, and stores the length written back into `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let got = &buf[..(len as usize).min(buf.len())];
    let end = got.iter().position(|&b| b == 0).unwrap_or(got.len());
    Ok(String::from_utf8_lossy(&got[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn names_are_checked_like_the_kernel_does() {
        assert!(valid_name("cubic").is_ok());
        assert!(valid_name("bbr").is_ok());
        assert!(valid_name("").is_err());
        assert!(valid_name("sixteen-chars-xx").is_err());
        assert!(valid_name("cu bic").is_err());
        assert!(valid_name("../x").is_err());
    }

    /// Reno is always built in; the connection accepted from a listener set
    /// to it uses it too, while the client side keeps the system default.
    #[test]
    fn accepted_connections_inherit_the_listeners_algorithm() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set(listener.as_raw_fd(), "reno").unwrap();
        assert_eq!(get(listener.as_raw_fd()).unwrap(), "reno");
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"x").unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(get(accepted.as_raw_fd()).unwrap(), "reno");
        let default = std::fs::read_to_string(DEFAULT).unwrap();
        assert_eq!(get(client.as_raw_fd()).unwrap(), default.trim());
    }

    #[test]
    fn an_unknown_algorithm_names_the_loaded_ones() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = set(listener.as_raw_fd(), "nosuchcc").unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, CongestionError::NotAvailable { .. }), "{text}");
        assert!(text.contains("reno"), "{text}");
        // The socket keeps what it had.
        let default = std::fs::read_to_string(DEFAULT).unwrap();
        assert_eq!(get(listener.as_raw_fd()).unwrap(), default.trim());
    }
}
