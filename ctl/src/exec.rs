//! `exec`'s I/O after init's response: the client's stdin goes up as `ExecInput` lines from
//! a thread of its own, the process' output comes down as `ExecOutput` lines, and the exit
//! line ends it.

use std::io::{BufRead, ErrorKind, Read, Write};
use std::sync::{Arc, Mutex};

use berth_control::{decode_bytes, encode_bytes, to_line, ExecInput, ExecOutput, VERSION};

/// The most stdin bytes one `ExecInput` line carries.
const STDIN_CHUNK: usize = 16 * 1024;

/// What a connection that ends before the exit line means.
pub(crate) const ENDED_EARLY: &str = "the connection to init ended before the process exited";

/// Sends everything `stdin` gives as `ExecInput` lines, then `stdin_close` at its end (or
/// when it fails, which the process sees as an end too). Stops when the connection does.
fn pump_stdin(program: &str, mut stdin: Box<dyn Read + Send>, writer: &Mutex<dyn Write + Send>) {
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let (input, last) = match stdin.read(&mut buf) {
            Ok(0) => (None, true),
            Ok(n) => (Some(encode_bytes(buf.get(..n).unwrap_or_default())), false),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("{program}: reading stdin: {e}; closing the process' stdin");
                (None, true)
            }
        };
        let line = to_line(&ExecInput {
            v: VERSION,
            stdin: input,
            stdin_close: last,
            resize: None,
        });
        let sent = match writer.lock() {
            Ok(mut w) => w.write_all(line.as_bytes()).and_then(|()| w.flush()),
            Err(_) => return,
        };
        if sent.is_err() || last {
            return;
        }
    }
}

/// Relays one exec: starts the stdin thread when `stdin` is given, writes the process'
/// output to `stdout` and `stderr` as it comes (flushed each time), and returns its exit
/// code. The error names what broke.
pub(crate) fn relay(
    program: &str,
    reader: &mut impl BufRead,
    writer: Arc<Mutex<dyn Write + Send>>,
    stdin: Option<Box<dyn Read + Send>>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, String> {
    if let Some(stdin) = stdin {
        let program = program.to_string();
        std::thread::spawn(move || pump_stdin(&program, stdin, &*writer));
    }
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(ENDED_EARLY.to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("{ENDED_EARLY}: {e}")),
        }
        let output: ExecOutput = serde_json::from_str(line.trim())
            .map_err(|e| format!("init sent a line that is not exec output ({e}): {line}"))?;
        if let Some(data) = &output.stdout {
            pass_on(data, stdout, "stdout")?;
        }
        if let Some(data) = &output.stderr {
            pass_on(data, stderr, "stderr")?;
        }
        if let Some(code) = output.exit {
            return Ok(code);
        }
    }
}

/// Decodes one chunk of the process' `name` stream and writes it out at once.
fn pass_on(data: &str, to: &mut dyn Write, name: &str) -> Result<(), String> {
    let bytes = decode_bytes(data).map_err(|e| format!("init's {name}: {e}"))?;
    to.write_all(&bytes)
        .and_then(|()| to.flush())
        .map_err(|e| format!("cannot write the process' {name}: {e}"))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn relay_lines(
        lines: &str,
        stdin: Option<&'static [u8]>,
    ) -> (Result<i32, String>, Vec<u8>, Vec<u8>) {
        let sent: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = relay(
            "berthctl",
            &mut lines.as_bytes(),
            sent,
            stdin.map(|s| Box::new(s) as Box<dyn Read + Send>),
            &mut out,
            &mut err,
        );
        (result, out, err)
    }

    #[test]
    fn output_goes_to_its_stream_and_the_exit_code_ends_it() {
        let lines = concat!(
            "{\"v\":1,\"stdout\":\"aGVsbG8g\"}\n",
            "{\"v\":1,\"stderr\":\"b29wcwo=\"}\n",
            "{\"v\":1,\"stdout\":\"d29ybGQK\"}\n",
            "{\"v\":1,\"exit\":3}\n",
            "{\"v\":1,\"stdout\":\"bGF0ZQo=\"}\n",
        );
        let (result, out, err) = relay_lines(lines, None);
        assert_eq!(result, Ok(3));
        assert_eq!(out, b"hello world\n");
        assert_eq!(err, b"oops\n");
    }

    #[test]
    fn a_connection_that_ends_first_or_bad_base64_is_an_error() {
        let (result, out, _) = relay_lines("{\"v\":1,\"stdout\":\"aGkK\"}\n", None);
        assert_eq!(result, Err(ENDED_EARLY.to_string()));
        assert_eq!(out, b"hi\n");
        let (result, _, _) = relay_lines("{\"v\":1,\"stdout\":\"!!\"}\n", None);
        assert!(result.unwrap_err().contains("init's stdout: bad base64"));
    }

    /// An endless stdin that counts what was read from it.
    struct Endless(Arc<std::sync::atomic::AtomicUsize>);

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(0);
            self.0
                .fetch_add(buf.len(), std::sync::atomic::Ordering::Relaxed);
            Ok(buf.len())
        }
    }

    /// A connection that takes `room` bytes, a few at a time, then fails as a closed one does.
    struct Slow {
        room: usize,
        taken: usize,
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.taken >= self.room {
                return Err(ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(100).min(self.room - self.taken);
            self.taken += n;
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn stdin_is_read_only_as_fast_as_the_connection_takes_it() {
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let room = 1 << 20;
        let writer: Arc<Mutex<Slow>> = Arc::new(Mutex::new(Slow { room, taken: 0 }));
        pump_stdin("berthctl", Box::new(Endless(Arc::clone(&read))), &*writer);
        // One chunk ahead of the connection at most: base64 sends 4 bytes for every 3 read.
        let read = read.load(std::sync::atomic::Ordering::Relaxed);
        assert!(read <= room * 3 / 4 + STDIN_CHUNK, "{read}");
        assert!(read >= room * 3 / 4 - STDIN_CHUNK, "{read}");
    }

    #[test]
    fn stdin_goes_up_in_chunks_then_closes() {
        let writer: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        pump_stdin("berthctl", Box::new(&b"hi\n"[..]), &*writer);
        let sent = String::from_utf8(writer.lock().unwrap().clone()).unwrap();
        assert_eq!(
            sent,
            "{\"v\":1,\"stdin\":\"aGkK\"}\n{\"v\":1,\"stdin_close\":true}\n"
        );
    }
}
