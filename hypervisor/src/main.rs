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
extern crate alloc;

#[cfg(target_os = "none")]
mod kernel {
    use alloc::vec::Vec;
    use bootloader_api::config::{BootloaderConfig, Mapping};
    use bootloader_api::info::{MemoryRegionKind, Optional};
    use bootloader_api::{entry_point, BootInfo};
    use core::sync::atomic::{AtomicBool, Ordering};
    use hypervisor::arch::{self, smp};
    use hypervisor::boot::{payload, KernelLoaded};
    use hypervisor::config::RunConfig;
    use hypervisor::limits::{MAX_CPUS, MAX_VCPUS};
    use hypervisor::machine::cpuid::{CpuidPolicy, Provided};
    use hypervisor::mm::host::{self as mem, KernelMemory};
    use hypervisor::mm::{frames, heap};
    use hypervisor::report::print as report;
    use hypervisor::vcpu::VcpuReport;
    use hypervisor::vm::{GuestImage, GuestOutput, Vm, VmParts};
    use hypervisor::vmx::controls::{derive_for_hypervisor, SecondaryProcBased};
    use hypervisor::workload::dirtylog;
    use hypervisor::{console, println, run, vmx};
    use log::{error, info};
    use spin::Once;

    pub static BOOTLOADER_CONFIG: BootloaderConfig = {
        let mut config = BootloaderConfig::new_default();
        config.mappings.physical_memory = Some(Mapping::Dynamic);
        config.kernel_stack_size = 128 * 1024;
        config
    };

    entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

    fn kernel_main(boot: &'static mut BootInfo) -> ! {
        let fb = core::mem::replace(&mut boot.framebuffer, Optional::None).into_option();
        console::init(fb, smp::current_index);
        let cpu = smp::register_current();
        arch::gdt::init(cpu);
        arch::idt::init();
        println!("hypervisor {} starting", env!("CARGO_PKG_VERSION"));
        let ok = match run(boot) {
            Ok(ok) => ok,
            Err(e) => {
                error!("{e}");
                false
            }
        };
        arch::finish(ok)
    }

    /// Reports of the vCPUs, one per core that ran one.
    static REPORTS: [Once<VcpuReport>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
    static VM: Once<Vm<KernelMemory>> = Once::new();
    /// vCPUs on application processors wait for this before entering.
    static START: AtomicBool = AtomicBool::new(false);
    /// Whether the boot core is the dirty-log controller (runs no vCPU).
    static CONTROLLER: AtomicBool = AtomicBool::new(false);

    /// The vCPU that core `cpu` runs.
    fn vcpu_of(cpu: usize) -> u32 {
        (cpu - CONTROLLER.load(Ordering::Acquire) as usize) as u32
    }

    /// Entry of every application processor once it is up.
    fn ap_entry(cpu: usize) -> ! {
        let vm = VM.wait();
        while !START.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        let id = vcpu_of(cpu);
        if id < vm.vcpus {
            REPORTS[id as usize].call_once(|| run::run(vm, id, cpu));
        }
        arch::halt_forever()
    }

    fn run(boot: &'static mut BootInfo) -> Result<bool, &'static str> {
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
        let kernel_run = !payload.kernel.is_empty();
        if kernel_run {
            info!(
                "payload: kernel {:?}, {} bytes, command line {:?}, initrd {} bytes",
                config.guest,
                payload.kernel.len(),
                payload.cmdline,
                payload.initrd.len()
            );
        }
        if !kernel_run {
            info!(
                "payload: guest {:?}, {} bytes",
                config.guest,
                payload.guest.len()
            );
        }
        info!(
            "guest memory {} MiB in {} slot(s), cache mode {}",
            config.mem_mib, config.slots, config.cache
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
        let heap = frames
            .alloc_contiguous((heap::HEAP_BYTES as u64) / frames::FRAME)
            .map_err(|_| "no memory for the kernel heap")?;
        // SAFETY: the frames were just taken from the allocator for the heap
        // alone and are mapped at the physical-memory offset.
        unsafe { heap::init((phys_offset + heap) as *mut u8, heap::HEAP_BYTES) };
        mem::init(frames, phys_offset);
        smp::mask_legacy_pic();

        vmx::hw::on::detect().map_err(|e| {
            error!("{e}");
            "VMX is not available"
        })?;
        let caps = vmx::hw::on::read_caps();
        println!("{caps}");
        if kernel_run && !caps.unrestricted_guest() {
            error!("{}", hypervisor::vm::NEEDS_UNRESTRICTED);
            return Err("this CPU cannot run a kernel");
        }
        let controls = derive_for_hypervisor(&caps).map_err(|e| {
            error!("{e}");
            "this CPU lacks VMX features the hypervisor needs"
        })?;
        info!("VMX controls: {controls}");

        let vmxon = mem::alloc_zeroed(1).ok_or("out of memory")?;
        // SAFETY: the frame was just allocated for this purpose and is mapped
        // at the physical-memory offset.
        let vmxon_word = unsafe { &mut *(mem::phys_to_virt(vmxon) as *mut u32) };
        vmx::hw::on::enable(&caps, vmxon, vmxon_word).map_err(|e| {
            error!("{e}");
            "VMX could not be enabled"
        })?;
        info!("VMXON ok");

        let dirty = config.iterations > 0;
        CONTROLLER.store(dirty, Ordering::Release);
        let wanted_vcpus = match config.cpus {
            // A kernel starts on one vCPU (the BSP).
            0 if kernel_run => 1,
            // One vCPU per core found, up to the most a VM can have.
            0 => MAX_VCPUS,
            n => n,
        };
        let cores = start_cores(boot, phys_offset, wanted_vcpus as usize + dirty as usize);
        let vcpus = (cores - dirty as usize) as u32;
        if vcpus == 0 {
            return Err("no core left to run a vCPU");
        }
        if config.cpus != 0 && vcpus != config.cpus {
            error!(
                "{} vCPU(s) requested, only {vcpus} core(s) can run one",
                config.cpus
            );
            return Err("not enough cores");
        }
        // The guest's TSC rate (CPUID or calibrated), which CPUID reports.
        let clock = arch::TscClock::new();
        let provided = Provided {
            rdtscp: controls
                .secondary()
                .contains(SecondaryProcBased::ENABLE_RDTSCP),
            gb_pages: true,
            tsc_hz: clock.hz(),
        };
        let parts = VmParts {
            config,
            caps,
            controls,
            vcpus,
            out: &Console,
            workload: dirty.then_some(&dirtylog::WORKLOAD as _),
            cpuid: CpuidPolicy::new(arch::cpuid, vcpus, provided),
            kick: &kick_vcpu,
            clock: alloc::sync::Arc::new(clock),
        };
        let vm = VM.try_call_once(|| {
            let image = if kernel_run {
                GuestImage::Kernel {
                    image: payload.kernel,
                    append: payload.cmdline,
                    initrd: payload.initrd,
                }
            } else {
                GuestImage::Native(payload.guest)
            };
            Vm::build_image(KernelMemory, parts, image).map_err(|e| {
                error!("{e}");
                "could not build the VM"
            })
        })?;
        info!(
            "VM: {vcpus} vCPU(s), {} KiB of guest RAM in {} memslot(s), guest entry {:#x}, free memory from {:#x}",
            vm.layout.mem_bytes >> 10,
            vm.with_slots(|s| s.len()),
            vm.entry,
            vm.layout.free_start
        );

        let range = |r: Option<(u64, u64)>| match r {
            Some((s, e)) => alloc::format!("at [{s:#x}, {e:#x})"),
            None => "none".into(),
        };
        match vm.kernel_loaded {
            Some(KernelLoaded::Multiboot(k)) => info!(
                "multiboot: kernel at [{:#x}, {:#x}), entry {:#x} in 32-bit protected mode, \
                 information at {:#x}, module 0 {}",
                k.kernel.0,
                k.kernel.1,
                k.entry,
                k.info,
                range(k.module)
            ),
            Some(KernelLoaded::Linux(k)) => info!(
                "linux: boot protocol {}.{:02}, kernel at [{:#x}, {:#x}) (init_size), entry {:#x} \
                 in 64-bit mode, zero page at {:#x}, command line at {:#x}, initrd {}",
                k.version >> 8,
                k.version & 0xff,
                k.kernel.0,
                k.kernel.1,
                k.entry,
                k.zero_page,
                k.cmdline,
                range(k.initrd)
            ),
            Some(KernelLoaded::Pvh(k)) => info!(
                "pvh: kernel at [{:#x}, {:#x}), entry {:#x} in 32-bit protected mode, start info \
                 at {:#x}, initrd {}",
                k.kernel.0,
                k.kernel.1,
                k.entry,
                k.start_info,
                range(k.initrd)
            ),
            None => {}
        }

        let tsc_hz = arch::tsc_hz();
        let release = || START.store(true, Ordering::Release);
        let outcome = if dirty {
            Some(dirtylog::controller(vm, release))
        } else {
            release();
            REPORTS[0].call_once(|| run::run(vm, 0, 0));
            None
        };
        let reports: Vec<&VcpuReport> = (0..vcpus as usize).map(|i| REPORTS[i].wait()).collect();
        vm.flush_output();
        let ok = reports.iter().all(|r| r.ok()) && outcome.as_ref().is_none_or(|o| o.ok);
        report::print(vm, &reports, outcome.as_ref(), tsc_hz, ok);
        vmx::hw::on::disable();
        info!("VMXOFF ok");
        Ok(ok)
    }

    /// Guest output goes to the console: hypercall lines prefixed by their
    /// vCPU, the UART's bytes as they are (the console is its terminal).
    struct Console;

    impl GuestOutput for Console {
        fn line(&self, vcpu: Option<u32>, text: &str) {
            match vcpu {
                Some(id) => println!("[vcpu{id}] {text}"),
                None => println!("{text}"),
            }
        }
        fn serial_write(&self, bytes: &[u8]) {
            console::write_guest(bytes);
        }
        fn serial_read(&self) -> Option<u8> {
            console::read_byte()
        }
    }

    /// Sends vCPU `id` out of the guest: a kick IPI to the core that runs it.
    fn kick_vcpu(id: u32) {
        let core = id as usize + CONTROLLER.load(Ordering::Acquire) as usize;
        if core != smp::current_index() {
            smp::kick(core);
        }
    }

    /// Starts application processors until `wanted` cores (with this one)
    /// run; returns how many do.
    fn start_cores(boot: &BootInfo, phys_offset: u64, wanted: usize) -> usize {
        if wanted <= 1 {
            return 1;
        }
        let mut alloc = |n: u64| mem::alloc_zeroed(n);
        match smp::start_aps(
            boot.rsdp_addr.into_option(),
            phys_offset,
            &boot.memory_regions,
            &mut alloc,
            wanted,
            ap_entry,
        ) {
            Ok(started) => {
                for id in &started.failed {
                    error!("core with APIC ID {id} did not start; going on without it");
                }
                info!("{} core(s) online", started.count);
                started.count
            }
            Err(e) => {
                error!("starting application processors: {e}; running on the boot core only");
                1
            }
        }
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
