//! A connection with neither TLS nor POP3 in it, shaped like a real one:
//! the same bytes each way, in the same turns, then the server closes.
//!
//! Run by `pop3-loadgen -s tcp-floor` against `tcp-floor`, its server CPU
//! per connection is what the kernel's TCP work and an io_uring runtime
//! alone cost a server for that exchange on this machine. No POP3S server
//! can spend less, so it is the floor under every figure the load generator
//! reports; added to the in-memory cost of the TLS work, it makes this
//! machine's ceiling for a whole connection (docs/benchmarks.md, "Hardware
//! ceiling"). On loopback the floor includes the client side's receive
//! processing, which the kernel does in the sender's context: a server
//! measured on loopback is charged it too, and so is the floor.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// The most bytes one side may send in one turn (a large RETR's worth).
pub const MAX_TURN: usize = 64 << 20;
/// The most turns in one exchange.
pub const MAX_STEPS: usize = 64;
/// Bytes written from, and compared against, these zeros.
static ZEROS: [u8; CHUNK] = [0; CHUNK];
/// The largest single write: about what pop3sd writes at once (four
/// 16 KiB TLS records).
const CHUNK: usize = 64 << 10;

/// One turn: the client sends `client` bytes, then the server answers with
/// `server` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub client: usize,
    pub server: usize,
}

/// The turns of one connection, written `CLIENT:SERVER,...` (for a TLS 1.3
/// handshake with a POP3 greeting and QUIT, e.g. `234:770,64:182,28:64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    steps: Vec<Step>,
}

/// Why a script does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScriptError {
    #[error("an exchange script needs at least one CLIENT:SERVER turn")]
    Empty,
    #[error("turn {turn} ({text:?}): expected CLIENT:SERVER, two byte counts")]
    Shape { turn: usize, text: String },
    #[error(
        "turn {turn}: the client must send at least one byte (the server answers what it reads)"
    )]
    SilentClient { turn: usize },
    #[error("turn {turn}: {bytes} bytes is more than one turn may send ({MAX_TURN})")]
    TooLarge { turn: usize, bytes: usize },
    #[error("{0} turns is more than an exchange may have ({MAX_STEPS})")]
    TooLong(usize),
}

impl FromStr for Script {
    type Err = ScriptError;

    fn from_str(s: &str) -> Result<Self, ScriptError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ScriptError::Empty);
        }
        let mut steps = Vec::new();
        for (i, part) in s.split(',').enumerate() {
            let turn = i + 1;
            let shape = || ScriptError::Shape {
                turn,
                text: part.to_string(),
            };
            let (c, sv) = part.trim().split_once(':').ok_or_else(shape)?;
            let client: usize = c.trim().parse().map_err(|_| shape())?;
            let server: usize = sv.trim().parse().map_err(|_| shape())?;
            if client == 0 {
                return Err(ScriptError::SilentClient { turn });
            }
            if let Some(bytes) = [client, server].into_iter().find(|&b| b > MAX_TURN) {
                return Err(ScriptError::TooLarge { turn, bytes });
            }
            steps.push(Step { client, server });
        }
        if steps.len() > MAX_STEPS {
            return Err(ScriptError::TooLong(steps.len()));
        }
        Ok(Script { steps })
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", s.client, s.server)?;
        }
        Ok(())
    }
}

impl Script {
    /// The turns, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The bytes the server sends in the whole exchange.
    pub fn server_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.server as u64).sum()
    }
}

/// What went wrong in one exchange, with the counter name the load
/// generator reports it under.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("turn {turn}: the peer closed after {got} of {want} bytes")]
    Closed {
        turn: usize,
        got: usize,
        want: usize,
    },
    #[error("turn {turn}: a byte other than the zeros the script sends")]
    Garbled { turn: usize },
    #[error("the server sent bytes past the end of the script instead of closing")]
    Extra,
}

impl FloorError {
    /// Counter name in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            FloorError::Connect(_) => "connect",
            FloorError::Io(_) => "io",
            FloorError::Closed { .. } => "eof",
            FloorError::Garbled { .. } => "garbled",
            FloorError::Extra => "extra-bytes",
        }
    }
}

/// Reads exactly `want` bytes into `buf`'s space, checking they are zeros.
async fn read_turn(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    want: usize,
    turn: usize,
) -> (Result<(), FloorError>, Vec<u8>) {
    let mut got = 0;
    while got < want {
        buf.clear();
        let room = buf.capacity().min(want - got);
        // Read no further than this turn: the next turn's bytes belong to
        // the next read (a peer keeps to the script, so none are there).
        let (res, slice) = stream.read(buf.slice_mut(..room)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) => return (Err(FloorError::Closed { turn, got, want }), buf),
            Ok(n) => {
                // monoio has set the length to the `n` bytes read.
                if buf[..n].iter().any(|&b| b != 0) {
                    return (Err(FloorError::Garbled { turn }), buf);
                }
                got += n;
            }
            Err(e) => return (Err(FloorError::Io(e)), buf),
        }
    }
    (Ok(()), buf)
}

/// Sends `n` zeros in writes of at most [`CHUNK`] bytes.
async fn write_turn(stream: &mut TcpStream, mut n: usize) -> io::Result<()> {
    while n > 0 {
        let k = n.min(CHUNK);
        let (res, _) = stream.write_all(&ZEROS[..k]).await;
        res?;
        n -= k;
    }
    Ok(())
}

/// The server's side of one connection: reads each turn's bytes, answers
/// with its own, and closes after the last (as a POP3 server closes after
/// answering QUIT, without waiting for the client to close first).
pub async fn serve(mut stream: TcpStream, script: &Script) -> Result<(), FloorError> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(CHUNK);
    for (i, step) in script.steps().iter().enumerate() {
        let (res, b) = read_turn(&mut stream, buf, step.client, i + 1).await;
        buf = b;
        res?;
        write_turn(&mut stream, step.server).await?;
    }
    Ok(())
}

/// The client's side: connects, plays every turn, and then expects the
/// server to close with nothing more sent. Returns the bytes received.
pub async fn exchange(addr: SocketAddr, script: &Script) -> Result<u64, FloorError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(FloorError::Connect)?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(CHUNK);
    for (i, step) in script.steps().iter().enumerate() {
        write_turn(&mut stream, step.client).await?;
        let (res, b) = read_turn(&mut stream, buf, step.server, i + 1).await;
        buf = b;
        res?;
    }
    buf.clear();
    let (res, _) = stream.read(buf.slice_mut(..1)).await;
    match res {
        Ok(0) => Ok(script.server_bytes()),
        Ok(_) => Err(FloorError::Extra),
        Err(e) => Err(FloorError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_parse_and_print_back() {
        let s: Script = "234:770, 64:182,28:64".parse().unwrap();
        assert_eq!(
            s.steps(),
            &[
                Step {
                    client: 234,
                    server: 770
                },
                Step {
                    client: 64,
                    server: 182
                },
                Step {
                    client: 28,
                    server: 64
                },
            ]
        );
        assert_eq!(s.to_string(), "234:770,64:182,28:64");
        assert_eq!(s.server_bytes(), 1016);
        assert_eq!("5:0".parse::<Script>().unwrap().server_bytes(), 0);
    }

    #[test]
    fn bad_scripts_say_what_is_wrong() {
        assert_eq!("".parse::<Script>(), Err(ScriptError::Empty));
        assert!(matches!(
            "234:770,64".parse::<Script>(),
            Err(ScriptError::Shape { turn: 2, .. })
        ));
        assert!(matches!(
            "a:1".parse::<Script>(),
            Err(ScriptError::Shape { turn: 1, .. })
        ));
        assert_eq!(
            "0:10".parse::<Script>(),
            Err(ScriptError::SilentClient { turn: 1 })
        );
        let big = format!("1:{}", MAX_TURN + 1);
        assert_eq!(
            big.parse::<Script>(),
            Err(ScriptError::TooLarge {
                turn: 1,
                bytes: MAX_TURN + 1
            })
        );
        let long = vec!["1:1"; MAX_STEPS + 1].join(",");
        assert_eq!(
            long.parse::<Script>(),
            Err(ScriptError::TooLong(MAX_STEPS + 1))
        );
    }

    fn on_loopback<F: std::future::Future>(
        f: impl FnOnce(SocketAddr, monoio::net::TcpListener) -> F,
    ) -> F::Output {
        let mut rt = crate::ring::runtime(256).expect("io_uring runtime");
        rt.block_on(async move {
            let l = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("addr");
            f(addr, l).await
        })
    }

    #[test]
    fn an_exchange_plays_every_turn_and_ends_with_the_servers_close() {
        // The 200 KB turn takes several reads and writes on each side.
        let script: Script = "234:770,64:182,30:200000,28:64".parse().unwrap();
        let (client, server) = on_loopback(|addr, l| {
            let s = script.clone();
            async move {
                let srv = monoio::spawn(async move {
                    let (conn, _) = l.accept().await.expect("accept");
                    serve(conn, &s).await
                });
                let c = exchange(addr, &script).await;
                (c, srv.await)
            }
        });
        server.expect("server side");
        assert_eq!(client.expect("client side"), 201_016);
    }

    #[test]
    fn a_server_off_script_is_an_error_not_a_result() {
        // The server sends one byte too many: the client sees it where it
        // expected the close.
        let (client, _) = on_loopback(|addr, l| async move {
            let srv = monoio::spawn(async move {
                let (conn, _) = l.accept().await.expect("accept");
                serve(conn, &"10:21".parse().unwrap()).await
            });
            (exchange(addr, &"10:20".parse().unwrap()).await, srv.await)
        });
        assert_eq!(client.unwrap_err().kind(), "extra-bytes");

        // And one too few: the close comes in the middle of a turn.
        let (client, _) = on_loopback(|addr, l| async move {
            let srv = monoio::spawn(async move {
                let (conn, _) = l.accept().await.expect("accept");
                serve(conn, &"10:19".parse().unwrap()).await
            });
            (exchange(addr, &"10:20".parse().unwrap()).await, srv.await)
        });
        assert!(matches!(
            client.unwrap_err(),
            FloorError::Closed {
                turn: 1,
                got: 19,
                want: 20
            }
        ));

        // Bytes that are not the script's zeros are garbled.
        let (client, _) = on_loopback(|addr, l| async move {
            let srv = monoio::spawn(async move {
                let (mut conn, _) = l.accept().await.expect("accept");
                let (_, _) = conn.read(Vec::with_capacity(10)).await;
                let (r, _) = conn.write_all(b"not zeros".to_vec()).await;
                r
            });
            (exchange(addr, &"10:9".parse().unwrap()).await, srv.await)
        });
        assert_eq!(client.unwrap_err().kind(), "garbled");
    }
}
