//! The emulated machine's COM1, both ways: the emulator connects its serial
//! port to a TCP socket we listen on (Bochs `mode=socket-client`, QEMU
//! `-serial tcp:`), what comes out is appended to the run's serial log
//! (which `emu::run` tails and judges), and what goes in is typed at the
//! terminal or read from a file.
//!
//! Input is never lost to an overrun: Bochs and QEMU read the socket only
//! while their UART's receiver is empty, and the hypervisor reads that UART
//! only while its guest's UART has room, so bytes wait in the socket until
//! the guest takes them. A guest that resets its FIFO drops what it held,
//! as on hardware: scripted input therefore waits for a line of the log
//! that says the guest is ready (`Input::Script::after`).

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// What is typed into the guest's serial console.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Input {
    /// Nothing.
    #[default]
    None,
    /// The terminal this command runs in, in raw mode, for the whole run
    /// (`Ctrl-A x` ends the run).
    Terminal,
    /// These bytes, sent once the serial log contains `after` (at once when
    /// `None`).
    Script {
        bytes: Vec<u8>,
        after: Option<String>,
    },
}

/// `Ctrl-A` then `x` ends an interactive run (QEMU's `-serial stdio` keys).
pub const ESCAPE: u8 = 0x01;

/// The serial line of one run.
pub struct SerialLine {
    addr: SocketAddr,
    /// The emulator's connection, for input, once it connected.
    stream: mpsc::Receiver<TcpStream>,
    writer: Option<TcpStream>,
    /// The reader thread ends when the emulator closes the line.
    reader: Option<std::thread::JoinHandle<()>>,
    connected: Arc<AtomicBool>,
}

impl SerialLine {
    /// Listens on a free local port; what the emulator sends is appended to
    /// `log`.
    pub fn open(log: &Path) -> Result<Self> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("listening for the emulator's COM1")?;
        let addr = listener.local_addr()?;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let (tx, rx) = mpsc::channel();
        let connected = Arc::new(AtomicBool::new(false));
        let flag = connected.clone();
        let reader = std::thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            flag.store(true, Ordering::Release);
            if let Ok(w) = s.try_clone() {
                let _ = tx.send(w);
            }
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if file.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(SerialLine {
            addr,
            stream: rx,
            writer: None,
            reader: Some(reader),
            connected,
        })
    }

    /// The emulator connects here.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sends bytes to the guest's UART; false while the emulator has not
    /// connected yet (nothing is sent then).
    pub fn send(&mut self, bytes: &[u8]) -> Result<bool> {
        if self.writer.is_none() {
            self.writer = self.stream.try_recv().ok();
        }
        match &mut self.writer {
            Some(w) => {
                w.write_all(bytes).context("typing into the guest's COM1")?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Waits (a little) for the emulator's last output after it exited or
    /// was killed, and stops the reader.
    pub fn close(mut self) {
        if !self.connected.load(Ordering::Acquire) {
            // Unblock the accept of an emulator that never connected.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        }
        if let Some(w) = self.writer.take() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The terminal in raw mode while the run lasts: keys go to the guest as
/// typed (no line editing, no echo, Ctrl-C to the guest); output processing
/// stays on, so the log's lines still start at the left. Restored on drop.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// `None` when stdin is not a terminal.
    pub fn enter() -> Option<Self> {
        // SAFETY: isatty and tcgetattr only read the state of fd 0 into a
        // termios we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
            raw.c_iflag &= !(libc::IXON | libc::ICRNL | libc::INLCR | libc::ISTRIP);
            raw.c_cc[libc::VMIN] = 1;
            raw.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawTerminal { saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// What a key typed at the terminal means.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    /// Bytes for the guest.
    Send(Vec<u8>),
    /// `Ctrl-A x`: end the run.
    Quit,
}

/// Turns typed bytes into keys: `Ctrl-A x` quits, `Ctrl-A Ctrl-A` sends one
/// `Ctrl-A`, `Ctrl-A` then anything else sends both. `pending` carries a
/// `Ctrl-A` typed at the end of one read into the next.
pub fn keys(bytes: &[u8], pending: &mut bool) -> Key {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if *pending {
            *pending = false;
            match b {
                b'x' | b'X' => return Key::Quit,
                ESCAPE => out.push(ESCAPE),
                _ => out.extend_from_slice(&[ESCAPE, b]),
            }
        } else if b == ESCAPE {
            *pending = true;
        } else {
            out.push(b);
        }
    }
    Key::Send(out)
}

/// Reads the terminal on a thread: keys arrive on the channel (stdin's end
/// closes it).
pub fn read_terminal() -> mpsc::Receiver<Key> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 256];
        let mut pending = false;
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let key = keys(&buf[..n], &mut pending);
                    let quit = key == Key::Quit;
                    if tx.send(key).is_err() || quit {
                        break;
                    }
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_sends_one() {
        let mut p = false;
        assert_eq!(keys(b"ls\r", &mut p), Key::Send(b"ls\r".to_vec()));
        assert_eq!(keys(b"a\x01", &mut p), Key::Send(b"a".to_vec()));
        assert!(p, "Ctrl-A carried over");
        assert_eq!(keys(b"x", &mut p), Key::Quit);
        let mut p = false;
        assert_eq!(keys(b"\x01\x01b", &mut p), Key::Send(b"\x01b".to_vec()));
        assert_eq!(keys(b"\x01c", &mut p), Key::Send(b"\x01c".to_vec()));
        assert!(!p);
    }

    #[test]
    fn the_line_carries_both_ways() {
        let dir = std::env::temp_dir().join(format!("xtask-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("serial.log");
        std::fs::write(&log, b"").unwrap();
        let mut line = SerialLine::open(&log).unwrap();
        assert!(!line.send(b"early").unwrap(), "nothing is connected yet");
        // The "emulator": echoes what it receives, then closes.
        let mut emu = TcpStream::connect(("127.0.0.1", line.port())).unwrap();
        emu.write_all(b"hello\n").unwrap();
        let mut sent = false;
        for _ in 0..100 {
            if line.send(b"typed").unwrap() {
                sent = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(sent);
        let mut got = [0u8; 5];
        emu.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"typed");
        emu.write_all(b"bye\n").unwrap();
        drop(emu);
        line.close();
        assert_eq!(std::fs::read(&log).unwrap(), b"hello\nbye\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn closing_a_line_nobody_connected_to_returns() {
        let dir = std::env::temp_dir().join(format!("xtask-console2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("serial.log");
        std::fs::write(&log, b"").unwrap();
        SerialLine::open(&log).unwrap().close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
