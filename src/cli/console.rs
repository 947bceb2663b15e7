//! `libgo vm console`: the terminal attached to a VM's serial console.
//!
//! On a terminal, stdin goes raw (every key to the guest) until `Ctrl-a q`
//! detaches (`Ctrl-a Ctrl-a` sends one `Ctrl-a`). From a pipe, stdin is
//! copied to the guest and the guest's output to stdout; at the end of
//! stdin the console is left once its output has been quiet for the linger
//! time.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;

const CTRL_A: u8 = 0x01;

/// The terminal's settings, restored when dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// What the keyboard filter makes of some bytes: what to send, and
/// whether the user asked to detach.
#[derive(Default)]
struct Escape {
    pending: bool,
}

impl Escape {
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'q' | b'Q' => return (out, true),
                    CTRL_A => out.push(CTRL_A),
                    other => out.extend_from_slice(&[CTRL_A, other]),
                }
            } else if b == CTRL_A {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// Attaches to the console of `vm` until detached, the end of a piped
/// stdin, or the server closing it.
pub async fn attach(client: &Client, vm: &str, linger: Duration) -> anyhow::Result<()> {
    let ws = client.console(vm).await?;
    let (mut tx, mut rx) = ws.split();
    let tty = std::io::stdin().is_terminal();
    let _raw = if tty {
        let raw = RawMode::enter()?;
        eprint!("Connected to the serial console of {vm}; type Ctrl-a q to detach.\r\n");
        Some(raw)
    } else {
        None
    };
    // stdin is read in a thread of its own (blocking reads).
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if keys_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut escape = Escape::default();
    let mut stdin_open = true;
    let mut stdout = std::io::stdout();
    loop {
        let quiet = tokio::time::sleep(linger);
        tokio::select! {
            key = keys.recv(), if stdin_open => match key {
                Some(bytes) => {
                    let (send, detach) = if tty { escape.feed(&bytes) } else { (bytes, false) };
                    if !send.is_empty() {
                        tx.send(Message::Binary(send.into())).await?;
                    }
                    if detach {
                        let _ = tx.send(Message::Close(None)).await;
                        eprint!("\r\nDetached from {vm}.\r\n");
                        return Ok(());
                    }
                }
                None => stdin_open = false,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    stdout.write_all(&b)?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Text(t))) => {
                    stdout.write_all(t.as_bytes())?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    if tty { eprint!("\r\n"); }
                    eprintln!("The console closed{}{why}", if why.is_empty() { "" } else { ": " });
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => anyhow::bail!("the console connection failed: {e}"),
                None => return Ok(()),
            },
            _ = quiet, if !stdin_open => {
                let _ = tx.send(Message::Close(None)).await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_q_detaches_and_ctrl_a_twice_sends_one() {
        let mut e = Escape::default();
        assert_eq!(e.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(e.feed(&[CTRL_A, CTRL_A, b'x']), (vec![CTRL_A, b'x'], false));
        assert_eq!(e.feed(&[b'a', CTRL_A]), (vec![b'a'], false));
        // The escape spans two reads.
        assert_eq!(e.feed(b"q"), (vec![], true));
        let mut e = Escape::default();
        assert_eq!(e.feed(&[CTRL_A, b'c']), (vec![CTRL_A, b'c'], false));
    }
}
