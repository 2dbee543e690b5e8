//! The text log format's field formatter: every field value and every message is written
//! with control characters escaped, so a log line is always exactly one line, whatever text
//! a peer managed to put into it (an operation id, an unknown message type, a serde error
//! quoting its input).
//!
//! Why a formatter and not care at each call site: fail2ban bans on lines that read
//! `alknet::auth: authentication failed remote=ADDR`, so a newline in a peer's string would
//! let the peer start a line of its own and get any address banned. Escaping here covers
//! every event and span of every crate, including the ones written tomorrow. The filter
//! (`deploy/fail2ban/alknet.conf`) is anchored at the start of the line, so text inside a
//! line cannot match either. The JSON format escapes by construction and is left alone.
//!
//! Escaped: C0 controls (`\n`, `\r`, `\t`, ESC, …), DEL, C1 controls, the Unicode line and
//! paragraph separators and the bidirectional overrides, written as `\n`, `\r`, `\t` or
//! `\u{…}`. Everything else, backslashes included, is written as it is.
//!
//! The layout is the default one (`name=value`, the message first and unnamed, `log.*`
//! fields of bridged `log` records left out, `r#` stripped); field names are in italics on
//! a terminal.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// [`FormatFields`] for the text format: the default layout with every value escaped.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let ansi = writer.has_ansi_escapes();
        let mut visitor = Visitor {
            out: &mut writer,
            ansi,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'a, 'w> {
    out: &'a mut Writer<'w>,
    ansi: bool,
    empty: bool,
    result: fmt::Result,
}

impl Visitor<'_, '_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        self.result = self.write_field(name, value);
        self.empty = false;
    }

    fn write_field(&mut self, name: &str, value: fmt::Arguments<'_>) -> fmt::Result {
        if !self.empty {
            self.out.write_char(' ')?;
        }
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            if self.ansi {
                write!(self.out, "\x1b[3m{name}\x1b[0m=")?;
            } else {
                write!(self.out, "{name}=")?;
            }
        }
        Escaping(&mut *self.out).write_fmt(value)
    }
}

impl Visit for Visitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, format_args!("{value}"));
        } else {
            // Quoted, as the default format writes strings.
            self.write(field, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

/// Writes through to `W`, escaping what could end a line or drive a terminal.
struct Escaping<W>(W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            if let Some(esc) = escape(c) {
                self.0.write_str(s.get(plain..i).unwrap_or_default())?;
                esc.write(&mut self.0)?;
                plain = i + c.len_utf8();
            }
        }
        self.0.write_str(s.get(plain..).unwrap_or_default())
    }
}

enum Escape {
    Short(&'static str),
    Code(u32),
}

impl Escape {
    fn write(&self, w: &mut impl fmt::Write) -> fmt::Result {
        match self {
            Escape::Short(s) => w.write_str(s),
            Escape::Code(c) => write!(w, "\\u{{{c:x}}}"),
        }
    }
}

fn escape(c: char) -> Option<Escape> {
    match c {
        '\n' => Some(Escape::Short("\\n")),
        '\r' => Some(Escape::Short("\\r")),
        '\t' => Some(Escape::Short("\\t")),
        // C0, DEL and C1 controls; line and paragraph separators; bidi embeddings,
        // overrides and isolates (text that reads differently from what it is).
        c if c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
        {
            Some(Escape::Code(u32::from(c)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(f: impl FnOnce()) -> String {
        let cap = Capture::default();
        let sink = cap.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = cap.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes).unwrap_or_default()
    }

    const FORGED: &str =
        "x\n2026-12-02T03:37:41.090358Z  WARN alknet::auth: authentication failed remote=6.6.6.6:1";

    #[test]
    fn peer_text_cannot_start_a_line() {
        let text = logged(|| {
            let span = tracing::info_span!("conn", op = %FORGED);
            let _g = span.enter();
            tracing::info!(error = %FORGED, quoted = FORGED, "violation {}", FORGED);
        });
        assert_eq!(
            text.matches('\n').count(),
            1,
            "one event, one line: {text:?}"
        );
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches("x\\n2026").count(), 4, "{text}");
        assert!(!text.contains('\r'));
    }

    #[test]
    fn controls_and_invisible_characters_are_escaped() {
        let text = logged(|| {
            tracing::warn!(v = %"a\r\x1b[31mb\x07\u{85}\u{2028}\u{202e}\\c\té", "m\x1b");
        });
        let line = text.trim_end_matches('\n');
        assert!(
            line.ends_with(r"m\u{1b} v=a\r\u{1b}[31mb\u{7}\u{85}\u{2028}\u{202e}\c\té"),
            "{line}"
        );
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
    }

    #[test]
    fn layout_is_the_default_one() {
        let text = logged(|| tracing::info!(r#type = "t", n = 3, ok = true, "done"));
        assert!(text.ends_with("done type=\"t\" n=3 ok=true\n"), "{text}");
    }
}
