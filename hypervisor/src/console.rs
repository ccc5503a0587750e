//! The console: COM1 through `uart_16550`, and the bootloader's framebuffer
//! (real machines often have no serial port), both behind the `log` facade.
//!
//! Every line goes to both. The serial log is what the tests read.

use bootloader_api::info::{FrameBuffer, PixelFormat};
use core::fmt::{self, Write};
use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};
use spin::{Mutex, Once};
use uart_16550::SerialPort;
use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
const LSR_DATA_READY: u8 = 0x01;
const LSR_TRANSMITTER_EMPTY: u8 = 0x40;

/// Whether the last byte the serial console sent ended a line: the
/// hypervisor's own lines start on a fresh one even when the guest's output
/// stopped mid-line (a prompt).
static AT_LINE_START: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

static SERIAL: Mutex<Option<SerialPort>> = Mutex::new(None);
static SCREEN: Mutex<Option<Screen>> = Mutex::new(None);

/// The logger; it prefixes each record with the core that logged it.
struct Logger {
    core: Once<fn() -> usize>,
}
static LOGGER: Logger = Logger { core: Once::new() };

/// Brings up COM1 and, when the bootloader gave one, the framebuffer; installs
/// the logger, which names each record's core by `core_index`. Safe to call
/// once, on the boot core, before anything logs.
pub fn init(framebuffer: Option<FrameBuffer>, core_index: fn() -> usize) {
    LOGGER.core.call_once(|| core_index);
    // SAFETY: 0x3f8 is the standard COM1 base; nothing else drives it.
    let mut port = unsafe { SerialPort::new(COM1) };
    port.init();
    let (mut data, mut ier, mut lcr): (Port<u8>, Port<u8>, Port<u8>) =
        (Port::new(COM1), Port::new(COM1 + 1), Port::new(COM1 + 3));
    // SAFETY: COM1's registers, which only this module drives. 115200 baud
    // (divisor 1, set with DLAB; `init` leaves 38400): every byte the guest
    // writes waits for the transmitter, and an emulated UART sends at the
    // programmed rate. Then 8N1 with DLAB clear, and IER 0: input is polled
    // (`read_byte`), no interrupt on the host.
    unsafe {
        lcr.write(0x80);
        data.write(1);
        ier.write(0);
        lcr.write(0x03);
        ier.write(0);
    }
    *SERIAL.lock() = Some(port);
    if let Some(fb) = framebuffer {
        *SCREEN.lock() = Screen::new(fb);
    }
    log::set_logger(&LOGGER).ok();
    log::set_max_level(log::LevelFilter::Info);
}

/// Writes text to every console, without a log prefix, on a line of its
/// own.
pub fn write_fmt(args: fmt::Arguments) {
    use core::sync::atomic::Ordering;
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(s) = SERIAL.lock().as_mut() {
            if !AT_LINE_START.swap(true, Ordering::Relaxed) {
                s.send(b'\n');
            }
            let _ = s.write_fmt(args);
        }
        if let Some(s) = SCREEN.lock().as_mut() {
            let _ = s.write_fmt(args);
        }
    });
}

/// Writes the guest's serial output to every console as it is: the console
/// is the guest's terminal.
pub fn write_guest(bytes: &[u8]) {
    use core::sync::atomic::Ordering;
    let Some(&last) = bytes.last() else { return };
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(s) = SERIAL.lock().as_mut() {
            // `send_raw`: no '\n' to "\r\n" translation; the guest chose.
            bytes.iter().for_each(|&b| s.send_raw(b));
            AT_LINE_START.store(last == b'\n', Ordering::Relaxed);
        }
        if let Some(s) = SCREEN.lock().as_mut() {
            bytes.iter().for_each(|&b| s.put(char::from(b)));
        }
    });
}

/// A character typed at the serial console, if one has arrived (the UART's
/// data-ready bit). The emulator or terminal on the other end holds further
/// characters until this one is read, so reading only when the guest has
/// room loses nothing.
pub fn read_byte() -> Option<u8> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _guard = SERIAL.lock();
        let mut lsr: Port<u8> = Port::new(COM1 + 5);
        let mut rbr: Port<u8> = Port::new(COM1);
        // SAFETY: LSR and RBR of COM1, which only this module drives (under
        // the lock held); reading RBR takes the character, as intended.
        unsafe { (lsr.read() & LSR_DATA_READY != 0).then(|| rbr.read()) }
    })
}

/// Waits until the UART has sent every byte, so that nothing is lost when the
/// emulator is told to shut down right after.
pub fn drain() {
    let mut lsr: Port<u8> = Port::new(COM1 + 5);
    for _ in 0..1_000_000 {
        // SAFETY: reading the line status register has no side effects.
        if unsafe { lsr.read() } & LSR_TRANSMITTER_EMPTY != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// `println!` for the hypervisor: to every console.
#[macro_export]
macro_rules! println {
    () => { $crate::console::write_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let cpu = self.core.get().map_or(0, |f| f());
            write_fmt(format_args!("[{:<5} cpu{}] {}\n", r.level(), cpu, r.args()));
        }
    }
    fn flush(&self) {
        drain();
    }
}

/// A text console on the framebuffer, scrolling when full.
struct Screen {
    fb: FrameBuffer,
    x: usize,
    y: usize,
}

const LINE: usize = RasterHeight::Size16.val() + 2;
const CHAR_W: usize = get_raster_width(FontWeight::Regular, RasterHeight::Size16);

impl Screen {
    fn new(mut fb: FrameBuffer) -> Option<Self> {
        let info = fb.info();
        if !matches!(
            info.pixel_format,
            PixelFormat::Rgb | PixelFormat::Bgr | PixelFormat::U8
        ) {
            return None; // an unknown pixel format: serial only
        }
        fb.buffer_mut().fill(0);
        Some(Screen { fb, x: 0, y: 0 })
    }

    fn newline(&mut self) {
        self.x = 0;
        self.y += LINE;
        let info = self.fb.info();
        if self.y + LINE > info.height {
            let row = info.stride * info.bytes_per_pixel;
            let buf = self.fb.buffer_mut();
            buf.copy_within(LINE * row.., 0);
            let len = buf.len();
            buf[len - LINE * row..].fill(0);
            self.y -= LINE;
        }
    }

    fn put(&mut self, c: char) {
        match c {
            '\n' => return self.newline(),
            '\r' => return self.x = 0,
            _ => {}
        }
        let info = self.fb.info();
        if self.x + CHAR_W > info.width {
            self.newline();
        }
        let raster = get_raster(c, FontWeight::Regular, RasterHeight::Size16)
            .or_else(|| get_raster('?', FontWeight::Regular, RasterHeight::Size16));
        let Some(raster) = raster else { return };
        let bpp = info.bytes_per_pixel;
        let buf = self.fb.buffer_mut();
        for (dy, row) in raster.raster().iter().enumerate() {
            for (dx, &v) in row.iter().enumerate() {
                let at = ((self.y + dy) * info.stride + self.x + dx) * bpp;
                let px = match info.pixel_format {
                    PixelFormat::U8 => [v >> 4, 0, 0, 0],
                    _ => [v, v, v, 0],
                };
                let n = bpp.min(4);
                if let Some(dst) = buf.get_mut(at..at + n) {
                    dst.copy_from_slice(&px[..n]);
                }
            }
        }
        self.x += CHAR_W;
    }
}

impl Write for Screen {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.chars().for_each(|c| self.put(c));
        Ok(())
    }
}
