//! The hypervisor kernel: booted by the rust-osdev bootloader, it brings up the
//! console, descriptor tables and memory, then VMX.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the hypervisor kernel only builds for x86_64-unknown-none; use `cargo xtask run`");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod kernel {
    use bootloader_api::config::{BootloaderConfig, Mapping};
    use bootloader_api::info::{MemoryRegionKind, Optional};
    use bootloader_api::{entry_point, BootInfo};
    use hypervisor::config::RunConfig;
    use hypervisor::{arch, console, frames, payload, println, smp, vmx};
    use log::{error, info};

    pub static BOOTLOADER_CONFIG: BootloaderConfig = {
        let mut config = BootloaderConfig::new_default();
        config.mappings.physical_memory = Some(Mapping::Dynamic);
        config.kernel_stack_size = 128 * 1024;
        config
    };

    entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

    fn kernel_main(boot: &'static mut BootInfo) -> ! {
        let fb = core::mem::replace(&mut boot.framebuffer, Optional::None).into_option();
        console::init(fb);
        let cpu = smp::register_current();
        arch::gdt::init(cpu);
        arch::idt::init();
        println!("hypervisor {} starting", env!("CARGO_PKG_VERSION"));
        let ok = match run(boot) {
            Ok(()) => true,
            Err(e) => {
                error!("{e}");
                false
            }
        };
        arch::finish(ok)
    }

    fn run(boot: &'static mut BootInfo) -> Result<(), &'static str> {
        let phys_offset = boot
            .physical_memory_offset
            .into_option()
            .ok_or("the bootloader did not map physical memory")?;

        let payload = match boot.ramdisk_addr.into_option() {
            // SAFETY: the bootloader maps the ramdisk at this address for
            // `ramdisk_len` bytes and never reuses it.
            Some(addr) => unsafe {
                core::slice::from_raw_parts(addr as *const u8, boot.ramdisk_len as usize)
            },
            None => &[],
        };
        let payload = payload::parse(payload).map_err(|e| {
            error!("payload: {e}");
            "no valid guest payload in the ramdisk"
        })?;
        let config = RunConfig::parse(payload.config).map_err(|e| {
            error!("{e}");
            "bad run configuration"
        })?;
        arch::set_emulator_exit(config.emulator);
        if cfg!(feature = "force-panic") {
            panic!("forced panic (built with the force-panic feature for the tests)");
        }
        info!(
            "payload: guest {:?}, {} bytes; guest memory {} MiB in {} slot(s), cache mode {}",
            config.guest,
            payload.guest.len(),
            config.mem_mib,
            config.slots,
            config.cache
        );

        let usable = boot
            .memory_regions
            .iter()
            .filter(|r| r.kind == MemoryRegionKind::Usable)
            .map(|r| (r.start, r.end));
        let mut frames = frames::FrameAllocator::new(usable);
        info!(
            "physical memory: {} MiB usable above 1 MiB",
            frames.remaining() >> 20
        );

        vmx::on::detect().map_err(|e| {
            error!("{e}");
            "VMX is not available"
        })?;
        let caps = vmx::on::read_caps();
        println!("{caps}");

        let vmxon = frames.alloc().map_err(|_| "out of memory")?;
        // SAFETY: the frame was just allocated for this purpose and is mapped
        // at the physical-memory offset.
        let vmxon_word = unsafe { &mut *((phys_offset + vmxon) as *mut u32) };
        vmx::on::enable(&caps, vmxon, vmxon_word).map_err(|e| {
            error!("{e}");
            "VMX could not be enabled"
        })?;
        info!("VMXON ok");
        vmx::on::disable();
        info!("VMXOFF ok");
        Ok(())
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        match info.location() {
            Some(l) => println!("PANIC at {}:{}: {}", l.file(), l.line(), info.message()),
            None => println!("PANIC: {}", info.message()),
        }
        arch::finish(false)
    }
}
