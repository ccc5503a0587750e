//! The guest's CPUID: one policy for the VM, answered per vCPU.
//!
//! The policy is built once from the host's CPUID (read through `raw-cpuid`
//! by the kernel, from a table in tests) and keeps only what the hypervisor
//! provides: VMX is hidden (its instructions #UD), "hypervisor present" is
//! set, and every feature whose MSRs or instructions the hypervisor does not
//! emulate is cleared, so that a guest never uses one and meets a #GP or an
//! exit it cannot have (SDM Vol. 2A, CPUID; Vol. 3C 26.1.2 for what exits
//! unconditionally). Topology leaves answer with the vCPU's own APIC ID:
//! vCPU N has APIC ID N, all vCPUs are cores of one package, one thread each.

use alloc::vec::Vec;

/// The hypervisor's CPUID signature at leaf 0x4000_0000 (EBX, ECX, EDX).
/// The native guests' ABI (`boot::abi::CPUID_SIGNATURE`, shared with the
/// guest crate) repeats it; a test in `boot::native` holds them equal.
pub const SIGNATURE: &[u8; 12] = b"RustHyperVMX";
pub const HV_BASE: u32 = 0x4000_0000;
/// Highest hypervisor leaf answered.
pub const HV_MAX: u32 = HV_BASE;

/// One CPUID answer: EAX, EBX, ECX, EDX.
pub type Regs = [u32; 4];

const fn bit(n: u32) -> u32 {
    1 << n
}

// Leaf 1 ECX.
const L1C_MONITOR: u32 = bit(3);
const L1C_DS_CPL: u32 = bit(4);
const L1C_VMX: u32 = bit(5);
const L1C_SMX: u32 = bit(6);
const L1C_EIST: u32 = bit(7);
const L1C_TM2: u32 = bit(8);
const L1C_SDBG: u32 = bit(11);
const L1C_PDCM: u32 = bit(15);
const L1C_X2APIC: u32 = bit(21);
const L1C_TSC_DEADLINE: u32 = bit(24);
const L1C_XSAVE: u32 = bit(26);
const L1C_OSXSAVE: u32 = bit(27);
const L1C_AVX: u32 = bit(28);
const L1C_FMA: u32 = bit(12);
const L1C_F16C: u32 = bit(29);
const L1C_HYPERVISOR: u32 = bit(31);
/// Leaf 1 ECX bits withheld: monitoring, VMX/SMX, power and thermal
/// control, perfmon capabilities, the x2APIC and the TSC-deadline timer (no
/// MSRs behind them yet), MONITOR/MWAIT (they exit and act as NOPs, as
/// KVM's do, but are not offered). OSXSAVE is not the host's: it follows the
/// guest's CR4 ([`Live`]).
const L1C_HIDDEN: u32 = L1C_MONITOR
    | L1C_DS_CPL
    | L1C_VMX
    | L1C_SMX
    | L1C_EIST
    | L1C_TM2
    | L1C_SDBG
    | L1C_PDCM
    | L1C_X2APIC
    | L1C_TSC_DEADLINE
    | L1C_OSXSAVE;
/// Leaf 1 ECX bits that use the AVX state (XCR0 bit 2).
const L1C_AVX_STATE: u32 = L1C_AVX | L1C_FMA | L1C_F16C;

/// XCR0 components offered: x87, SSE and AVX (XSETBV is emulated and
/// checked against these; AVX-512, MPX, PKRU and AMX are not offered).
pub const XCR0_OFFERED: u64 = 0x7;
const XCR0_AVX: u64 = 0x4;
/// Leaf 0xD subleaf 1 EAX bits kept: XSAVEOPT, XSAVEC, XGETBV with ECX = 1.
/// XSAVES is withheld: it needs IA32_XSS, which is not emulated.
const LD1A_KEPT: u32 = 0x7;

/// Guest state some answers depend on (SDM Vol. 2A CPUID: OSXSAVE reflects
/// CR4.OSXSAVE; leaf 0xD EBX is the XSAVE area size for the current XCR0).
#[derive(Debug, Clone, Copy)]
pub struct Live {
    pub cr4_osxsave: bool,
    pub xcr0: u64,
}

impl Live {
    /// A vCPU after reset: CR4.OSXSAVE = 0, XCR0 = 1 (x87 only).
    pub const RESET: Live = Live {
        cr4_osxsave: false,
        xcr0: 1,
    };
}

// Leaf 1 EDX.
const L1D_MCE: u32 = bit(7);
const L1D_MTRR: u32 = bit(12);
const L1D_MCA: u32 = bit(14);
const L1D_DS: u32 = bit(21);
const L1D_ACPI: u32 = bit(22);
const L1D_HTT: u32 = bit(28);
const L1D_TM: u32 = bit(29);
const L1D_PBE: u32 = bit(31);
/// Machine-check, MTRR, debug store, thermal and power MSRs are not
/// emulated. The APIC bit stays: each vCPU has a local APIC model
/// (`devices::lapic`, IA32_APIC_BASE in `exits::msr`).
const L1D_HIDDEN: u32 =
    L1D_MCE | L1D_MTRR | L1D_MCA | L1D_DS | L1D_ACPI | L1D_TM | L1D_PBE | L1D_HTT;

// Leaf 7 subleaf 0.
/// EBX: TSC_ADJUST, SGX, INVPCID (not enabled for the
/// guest on every CPU), RTM/HLE kept out for determinism, PQM/PQE, MPX,
/// AVX-512 (needs XSAVE), Intel PT.
const L7B_HIDDEN: u32 = bit(1)
    | bit(2)
    | bit(4)
    | bit(10)
    | bit(11)
    | bit(12)
    | bit(14)
    | bit(15)
    | bit(16)
    | bit(17)
    | bit(21)
    | bit(25)
    | bit(26)
    | bit(27)
    | bit(28)
    | bit(30)
    | bit(31);
/// ECX: AVX512_VBMI, UMIP kept, PKU/OSPKE (need XSAVE), WAITPKG (UMWAIT
/// not handled), AVX512 extensions, SGX launch control.
const L7C_HIDDEN: u32 =
    bit(1) | bit(3) | bit(4) | bit(5) | bit(6) | bit(11) | bit(12) | bit(14) | bit(30);
/// EDX: AVX512 extensions, hybrid, AMX (needs XSAVE state not offered), and
/// the MSRs not emulated: IA32_SPEC_CTRL/IA32_PRED_CMD (IBRS/IBPB, STIBP,
/// SSBD), IA32_FLUSH_CMD, IA32_ARCH_CAPABILITIES, IA32_CORE_CAPABILITIES.
const L7D_HIDDEN: u32 = bit(2)
    | bit(3)
    | bit(8)
    | bit(15)
    | bit(22)
    | bit(24)
    | bit(25)
    | bit(26)
    | bit(27)
    | bit(28)
    | bit(29)
    | bit(30)
    | bit(31);
/// Leaf 7 EBX AVX2: uses the AVX state.
const L7B_AVX2: u32 = bit(5);

// Leaf 0x8000_0001 EDX.
const E1D_RDTSCP: u32 = bit(27);
const E1D_PDPE1GB: u32 = bit(26);

/// What the VMX controls let the guest have, which the policy must follow.
#[derive(Debug, Clone, Copy, Default)]
pub struct Provided {
    /// "Enable RDTSCP" is set: RDTSCP does not #UD.
    pub rdtscp: bool,
    /// EPT maps 1 GiB pages for the guest's own 1 GiB pages (always true
    /// with EPT: the guest's paging is its own).
    pub gb_pages: bool,
    /// The guest's TSC rate in Hz (the host's: guest TSC = host TSC +
    /// offset); 0 when unknown. Leaves 0x15 and 0x16 report it, with the
    /// local APIC timer's 1 GHz as the crystal clock (see [`timing_leaf`]).
    pub tsc_hz: u64,
}

/// The core crystal clock leaves report: the local APIC model's timer
/// input (`devices::lapic`, 1 GHz, what KVM and QEMU give their APICs).
pub const CRYSTAL_HZ: u32 = 1_000_000_000;

/// The largest TSC/crystal numerator leaf 0x15 gives: Linux computes the
/// TSC in kHz as `crystal_khz * EBX / EAX` in 32 bits
/// (`native_calibrate_tsc`), and the crystal is 10^6 kHz.
const MAX_NUMERATOR: u64 = u32::MAX as u64 / (CRYSTAL_HZ as u64 / 1000);

/// Leaves 0x15 (TSC/crystal ratio, SDM Vol. 2A CPUID "Time Stamp Counter
/// and Nominal Core Crystal Clock Information Leaf") and 0x16 (processor
/// frequency, MHz) for a TSC of `tsc_hz`. TSC = ECX × EBX / EAX with the
/// crystal ECX the APIC timer's 1 GHz, so that an OS that derives its APIC
/// timer period from the crystal (Linux does) gets the model's rate. The
/// ratio's numerator is kept at most [`MAX_NUMERATOR`] (Linux multiplies it
/// by the crystal in kHz in 32 bits) and the denominator as large as that
/// allows: the TSC comes out within 1/4294 of its rate.
pub fn timing_leaf(leaf: u32, tsc_hz: u64) -> Regs {
    let mhz = (tsc_hz / 1_000_000).min(0xffff) as u32;
    let crystal = u128::from(CRYSTAL_HZ);
    // numerator / denominator = tsc_hz / crystal, numerator <= MAX.
    let den = (u128::from(MAX_NUMERATOR) * crystal / u128::from(tsc_hz.max(1)))
        .clamp(1, u128::from(u32::MAX));
    let num = ((u128::from(tsc_hz) * den + crystal / 2) / crystal).min(u128::from(MAX_NUMERATOR));
    match leaf {
        0x15 if tsc_hz != 0 && num != 0 => [den as u32, num as u32, CRYSTAL_HZ, 0],
        0x16 if mhz != 0 => [mhz, mhz, CRYSTAL_HZ / 1_000_000, 0],
        _ => [0; 4],
    }
}

/// The lowest highest-basic-leaf the policy reports when it knows the TSC
/// rate, so that leaves 0x15 and 0x16 are in range.
const MIN_BASIC_WITH_TSC: u32 = 0x16;

/// The VM's CPUID, filtered once; [`CpuidPolicy::answer`] adds the vCPU.
#[derive(Debug, Clone)]
pub struct CpuidPolicy {
    /// (leaf, subleaf, regs), subleaf `None` when the leaf has none.
    entries: Vec<(u32, Option<u32>, Regs)>,
    max_basic: u32,
    max_ext: u32,
    vcpus: u32,
    /// XCR0 bits offered (0: no XSAVE).
    xcr0: u64,
    /// Leaf 0xD subleaves 2.. of the host: (size, offset) of each component.
    xsave_layout: [(u32, u32); 8],
    /// The host's leaf 0xD subleaf 1 EAX (XSAVE instruction variants).
    stored_host_d1: u32,
}

/// Leaves that have subleaves (answered per ECX).
fn has_subleaves(leaf: u32) -> bool {
    matches!(
        leaf,
        4 | 7 | 0xb | 0xd | 0xf | 0x10 | 0x12 | 0x14 | 0x17 | 0x18 | 0x1f
    )
}

/// Number of bits needed to number `n` things (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

impl CpuidPolicy {
    /// Builds the policy from `host(leaf, subleaf)` for a VM of `vcpus`.
    pub fn new(host: impl Fn(u32, u32) -> Regs, vcpus: u32, provided: Provided) -> Self {
        let host_max = host(0, 0)[0];
        // Leaves above the host's highest answer the highest one's data
        // on Intel: those the policy adds are empty unless it fills them.
        let host = |leaf: u32, sub: u32| {
            if leaf > host_max && leaf < 0x8000_0000 {
                [0; 4]
            } else {
                host(leaf, sub)
            }
        };
        let mut max_basic = host_max.min(0x1f);
        if provided.tsc_hz != 0 {
            max_basic = max_basic.max(MIN_BASIC_WITH_TSC);
        }
        // XSAVE: the hypervisor turns CR4.OSXSAVE on in every host core that
        // has it, so that XSETBV can be emulated.
        let xcr0 = if host(1, 0)[2] & L1C_XSAVE != 0 && max_basic >= 0xd {
            u64::from(host(0xd, 0)[0]) & XCR0_OFFERED
        } else {
            0
        };
        // x87 and SSE are the minimum XSAVE can mean.
        let xcr0 = if xcr0 & 3 == 3 { xcr0 } else { 0 };
        let mut xsave_layout = [(0, 0); 8];
        for (i, l) in xsave_layout.iter_mut().enumerate().skip(2) {
            if xcr0 & (1 << i) != 0 {
                let [size, offset, _, _] = host(0xd, i as u32);
                *l = (size, offset);
            }
        }
        let max_ext = host(0x8000_0000, 0)[0].clamp(0x8000_0000, 0x8000_0008);
        let mut entries = Vec::new();
        for leaf in (0..=max_basic).chain(0x8000_0000..=max_ext) {
            if has_subleaves(leaf) {
                for sub in 0..64 {
                    let r = Self::filter(leaf, sub, host(leaf, sub), provided, xcr0);
                    entries.push((leaf, Some(sub), r));
                }
            } else {
                entries.push((
                    leaf,
                    None,
                    Self::filter(leaf, 0, host(leaf, 0), provided, xcr0),
                ));
            }
        }
        CpuidPolicy {
            entries,
            max_basic,
            max_ext,
            vcpus: vcpus.max(1),
            xcr0,
            xsave_layout,
            stored_host_d1: if xcr0 != 0 { host(0xd, 1)[0] } else { 0 },
        }
    }

    /// The host's answer with everything not provided taken out.
    fn filter(leaf: u32, sub: u32, r: Regs, p: Provided, xcr0: u64) -> Regs {
        let [a, b, c, d] = r;
        let avx = xcr0 & XCR0_AVX != 0;
        match leaf {
            // The highest basic leaf is patched in `answer_live`.
            0 => [a, b, c, d],
            1 => {
                let mut c = (c & !L1C_HIDDEN) | L1C_HYPERVISOR;
                if xcr0 == 0 {
                    c &= !L1C_XSAVE;
                }
                if !avx {
                    c &= !L1C_AVX_STATE;
                }
                [a, b, c, d & !L1D_HIDDEN]
            }
            // XSAVE: answered in `answer` from the offered components.
            0xd => [0; 4],
            // Cache parameters: kept (topology fields patched per vCPU).
            4 => r,
            // MONITOR/MWAIT, thermal/power, perfmon, resource monitoring,
            // SGX, PT: not provided.
            5 | 6 | 0xa | 0xf | 0x10 | 0x12 | 0x14 => [0; 4],
            7 if sub == 0 => {
                let mut b = b & !L7B_HIDDEN;
                if !avx {
                    b &= !L7B_AVX2;
                }
                [a, b, c & !L7C_HIDDEN, d & !L7D_HIDDEN]
            }
            7 => [0; 4],
            0x8000_0000 => [a.clamp(0x8000_0000, 0x8000_0008), b, c, d],
            0x8000_0001 => {
                let mut d = d;
                if !p.rdtscp {
                    d &= !E1D_RDTSCP;
                }
                if !p.gb_pages {
                    d &= !E1D_PDPE1GB;
                }
                [a, b, c, d]
            }
            // The TSC and crystal rates of this VM, not the host's.
            0x15 | 0x16 => timing_leaf(leaf, p.tsc_hz),
            // Invariant TSC only.
            0x8000_0007 => [0, 0, 0, d & bit(8)],
            _ => r,
        }
    }

    fn stored(&self, leaf: u32, sub: u32) -> Regs {
        self.entries
            .iter()
            .find(|(l, s, _)| *l == leaf && s.is_none_or(|s| s == sub))
            .map_or([0; 4], |e| e.2)
    }

    /// CPUID(`leaf`, `sub`) as vCPU `vcpu` sees it after reset (for the
    /// answers that do not depend on its CR4 and XCR0).
    pub fn answer(&self, vcpu: u32, leaf: u32, sub: u32) -> Regs {
        self.answer_live(vcpu, leaf, sub, Live::RESET)
    }

    /// The XCR0 bits a guest may set (CPUID leaf 0xD subleaf 0 EDX:EAX).
    pub fn xcr0_supported(&self) -> u64 {
        self.xcr0
    }

    /// Bytes of an XSAVE area holding the components of `xcr0` (the legacy
    /// area and header, 576 bytes, then each component at its offset).
    fn xsave_size(&self, xcr0: u64) -> u32 {
        (2..8)
            .filter(|&i| xcr0 & self.xcr0 & (1 << i) != 0)
            .map(|i| {
                let (size, offset) = self.xsave_layout[i];
                size + offset
            })
            .fold(576, u32::max)
    }

    /// CPUID(`leaf`, `sub`) as vCPU `vcpu` sees it, with its CR4 and XCR0.
    pub fn answer_live(&self, vcpu: u32, leaf: u32, sub: u32, live: Live) -> Regs {
        let apic_id = vcpu;
        let core_bits = bits_for(self.vcpus);
        match leaf {
            HV_BASE => {
                let w = |i: usize| {
                    u32::from_le_bytes([
                        SIGNATURE[i],
                        SIGNATURE[i + 1],
                        SIGNATURE[i + 2],
                        SIGNATURE[i + 3],
                    ])
                };
                [HV_MAX, w(0), w(4), w(8)]
            }
            0x4000_0001..=0x4fff_ffff => [0; 4],
            0 => {
                let [_, b, c, d] = self.stored(0, 0);
                [self.max_basic, b, c, d]
            }
            // Above the highest leaf: Intel CPUs answer with the highest
            // basic leaf's data (SDM Vol. 2A, CPUID, "INPUT EAX = 0").
            l if l > self.max_basic && l < 0x8000_0000 => {
                self.answer_live(vcpu, self.max_basic, sub, live)
            }
            l if l > self.max_ext => self.answer_live(vcpu, self.max_basic, sub, live),
            0xd => match sub {
                _ if self.xcr0 == 0 => [0; 4],
                0 => [
                    self.xcr0 as u32,
                    self.xsave_size(live.xcr0),
                    self.xsave_size(self.xcr0),
                    (self.xcr0 >> 32) as u32,
                ],
                1 => [
                    self.stored_host_d1 & LD1A_KEPT,
                    self.xsave_size(live.xcr0),
                    0,
                    0,
                ],
                i @ 2..=7 if self.xcr0 & (1 << i) != 0 => {
                    let (size, offset) = self.xsave_layout[i as usize];
                    [size, offset, 0, 0]
                }
                _ => [0; 4],
            },
            1 => {
                let [a, b, mut c, mut d] = self.stored(1, 0);
                if live.cr4_osxsave && self.xcr0 != 0 {
                    c |= L1C_OSXSAVE;
                }
                // EBX: APIC ID 31:24, addressable logical IDs 23:16, CLFLUSH
                // size and brand index kept.
                let logical = (1u32 << core_bits).min(255);
                let b = (b & 0xffff) | (logical << 16) | (apic_id << 24);
                if self.vcpus > 1 {
                    d |= L1D_HTT;
                }
                [a, b, c, d]
            }
            4 => {
                let [a, b, c, d] = self.stored(4, sub);
                if a & 0x1f == 0 {
                    return [0; 4];
                }
                // EAX 31:26: cores per package - 1; 25:14: logical processors
                // sharing this cache - 1 (one thread per core: 0 below L3).
                let cores = (1u32 << core_bits) - 1;
                let level = (a >> 5) & 7;
                let sharing = if level >= 3 { cores } else { 0 };
                [(a & 0x3fff) | (sharing << 14) | (cores << 26), b, c, d]
            }
            0xb | 0x1f => {
                // Extended topology: level 0 SMT (1 thread), level 1 core.
                let (eax, ebx, kind) = match sub {
                    0 => (0, 1, 1),
                    1 => (core_bits, self.vcpus, 2),
                    _ => (0, 0, 0),
                };
                [eax, ebx, (kind << 8) | (sub & 0xff), apic_id]
            }
            _ => self.stored(leaf, sub),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host CPU that claims every feature bit, with 0x16 basic leaves.
    fn everything(leaf: u32, sub: u32) -> Regs {
        match leaf {
            0 => [0x16, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            4 if sub < 4 => [
                (((sub + 1).min(3)) << 5) | 1 | (7 << 26) | (1 << 14),
                1,
                2,
                3,
            ],
            4 => [0; 4],
            _ => [u32::MAX; 4],
        }
    }

    fn policy(vcpus: u32) -> CpuidPolicy {
        CpuidPolicy::new(everything, vcpus, Provided::default())
    }

    #[test]
    fn hides_vmx_and_what_is_not_emulated_and_says_hypervisor() {
        let p = policy(1);
        let [_, _, c, d] = p.answer(0, 1, 0);
        assert_eq!(c & L1C_VMX, 0);
        assert_ne!(c & L1C_HYPERVISOR, 0);
        for (hidden, name) in [
            (L1C_X2APIC, "x2APIC"),
            (L1C_TSC_DEADLINE, "TSC deadline"),
            (L1C_OSXSAVE, "OSXSAVE at reset"),
            (L1C_PDCM, "PDCM"),
            (L1C_MONITOR, "MONITOR"),
        ] {
            assert_eq!(c & hidden, 0, "{name}");
        }
        for (hidden, name) in [(L1D_MTRR, "MTRR"), (L1D_MCA, "MCA"), (L1D_MCE, "MCE")] {
            assert_eq!(d & hidden, 0, "{name}");
        }
        assert_eq!(p.answer(0, 7, 0)[1] & bit(1), 0, "TSC_ADJUST");
        assert_eq!(p.answer(0, 0xa, 0), [0; 4], "no performance counters");
        assert_eq!(p.answer(0, 0xd, 1)[0] & bit(3), 0, "no XSAVES");
        assert_eq!(p.answer(0, 7, 0)[3] & bit(26), 0, "no IA32_SPEC_CTRL");
        assert_eq!(p.answer(0, 0x8000_0001, 0)[3] & E1D_RDTSCP, 0);
        let with = CpuidPolicy::new(
            everything,
            1,
            Provided {
                rdtscp: true,
                gb_pages: true,
                tsc_hz: 0,
            },
        );
        assert_ne!(with.answer(0, 0x8000_0001, 0)[3] & E1D_RDTSCP, 0);
    }

    /// The TSC in kHz as Linux's `native_calibrate_tsc` computes it from
    /// leaf 0x15, in its 32-bit arithmetic (None where it would overflow).
    fn linux_tsc_khz(den: u32, num: u32, crystal_hz: u32) -> Option<u32> {
        (crystal_hz / 1000).checked_mul(num).map(|x| x / den)
    }

    /// A host whose highest basic leaf is 0xD (no timing leaves).
    fn old_host(leaf: u32, sub: u32) -> Regs {
        match leaf {
            0 => [0xd, 0, 0, 0],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            _ => everything(leaf, sub),
        }
    }

    #[test]
    fn timing_leaves_report_the_vms_tsc_and_the_apic_timer_crystal() {
        let tsc_hz = 2_903_998_123;
        for host in [everything as fn(u32, u32) -> Regs, old_host] {
            let p = CpuidPolicy::new(
                host,
                1,
                Provided {
                    tsc_hz,
                    ..Provided::default()
                },
            );
            assert!(p.answer(0, 0, 0)[0] >= 0x16, "leaves 0x15/0x16 in range");
            let [den, num, crystal, _] = p.answer(0, 0x15, 0);
            assert_eq!(crystal, CRYSTAL_HZ, "the APIC timer's rate");
            assert_eq!(p.answer(0, 0x16, 0)[..3], [2903, 2903, 1000]);
            let khz = linux_tsc_khz(den, num, crystal).expect("no overflow");
            assert!(khz.abs_diff(2_903_998) < 1000, "{khz} kHz");
        }
        // Linux's arithmetic gives every rate to 1/4000 (Bochs' 50 MHz
        // included), with no 32-bit overflow.
        for tsc_hz in [
            1_000_000u64,
            50_079_000,
            2_419_200_000,
            3_500_000_000,
            5_800_000_000,
        ] {
            let [den, num, crystal, _] = timing_leaf(0x15, tsc_hz);
            let khz = linux_tsc_khz(den, num, crystal).expect("no overflow");
            let err = (khz as f64 * 1000.0 - tsc_hz as f64).abs() / tsc_hz as f64;
            assert!(err < 1.0 / 4000.0, "{tsc_hz} Hz reads as {khz} kHz");
        }
        // Unknown rate: the leaves say "not enumerated" (0), not the host's.
        let p = policy(1);
        assert_eq!(p.answer(0, 0x15, 0), [0; 4]);
        assert_eq!(p.answer(0, 0x16, 0), [0; 4]);
        // A host below 0x15 answers the leaves it lacks with zeros, not with
        // copies of its highest leaf.
        let p = CpuidPolicy::new(
            old_host,
            1,
            Provided {
                tsc_hz,
                ..Provided::default()
            },
        );
        assert_eq!(p.answer(0, 0xe, 0), [0; 4]);
    }

    #[test]
    fn each_vcpu_sees_its_own_apic_id() {
        let p = policy(4);
        for id in 0..4 {
            assert_eq!(p.answer(id, 1, 0)[1] >> 24, id, "leaf 1 EBX");
            assert_eq!(p.answer(id, 0xb, 0)[3], id, "leaf 0xB EDX, SMT level");
            assert_eq!(p.answer(id, 0xb, 1)[3], id, "leaf 0xB EDX, core level");
        }
        // Four cores of one thread: shifts 0 and 2, counts 1 and 4.
        assert_eq!(p.answer(2, 0xb, 0)[..3], [0, 1, 0x100]);
        assert_eq!(p.answer(2, 0xb, 1)[..3], [2, 4, 0x201]);
        assert_eq!(p.answer(2, 0xb, 2)[..3], [0, 0, 2]);
        assert_ne!(p.answer(0, 1, 0)[3] & L1D_HTT, 0);
        assert_eq!((p.answer(0, 4, 0)[0] >> 26) + 1, 4, "cores per package");
        assert_eq!(policy(1).answer(0, 1, 0)[3] & L1D_HTT, 0);
    }

    #[test]
    fn hypervisor_leaves_and_out_of_range_leaves() {
        let p = policy(1);
        let [max, b, c, d] = p.answer(0, HV_BASE, 0);
        assert_eq!(max, HV_MAX);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&c.to_le_bytes());
        sig[8..].copy_from_slice(&d.to_le_bytes());
        assert_eq!(&sig, SIGNATURE);
        assert_eq!(p.answer(0, HV_BASE + 1, 0), [0; 4]);
        // Past the highest basic leaf: the highest basic leaf's answer.
        assert_eq!(p.answer(0, 0x17, 0), p.answer(0, 0x16, 0));
    }
}

#[cfg(test)]
mod xsave_tests {
    use super::*;

    /// A host with XSAVE, x87/SSE/AVX and AVX-512 state, AVX at 576 + 256.
    fn host(leaf: u32, sub: u32) -> Regs {
        match (leaf, sub) {
            (0, _) => [0xd, 0, 0, 0],
            (1, _) => [0, 0, L1C_XSAVE | L1C_AVX | L1C_OSXSAVE, 0],
            (7, 0) => [0, L7B_AVX2, 0, 0],
            (0xd, 0) => [0xe7, 0x340, 0xa80, 0],
            (0xd, 1) => [0xf, 0, 0, 0],
            (0xd, 2) => [0x100, 0x240, 0, 0],
            (0xd, 5) => [0x40, 0x440, 0, 0],
            _ => [0; 4],
        }
    }

    #[test]
    fn xsave_offers_x87_sse_avx_and_follows_cr4_and_xcr0() {
        let p = CpuidPolicy::new(host, 1, Provided::default());
        assert_eq!(p.xcr0_supported(), 7, "AVX-512 state is not offered");
        let reset = p.answer(0, 1, 0)[2];
        assert_ne!(reset & L1C_XSAVE, 0);
        assert_ne!(reset & L1C_AVX, 0);
        assert_eq!(
            reset & L1C_OSXSAVE,
            0,
            "the host's OSXSAVE is not the guest's"
        );
        let live = Live {
            cr4_osxsave: true,
            xcr0: 7,
        };
        assert_ne!(p.answer_live(0, 1, 0, live)[2] & L1C_OSXSAVE, 0);
        assert_eq!(p.answer(0, 0xd, 0), [7, 576, 576 + 256, 0]);
        assert_eq!(p.answer_live(0, 0xd, 0, live)[1], 576 + 256);
        assert_eq!(p.answer(0, 0xd, 1)[0], 0x7, "XSAVES withheld");
        assert_eq!(p.answer(0, 0xd, 2), [0x100, 0x240, 0, 0]);
        assert_eq!(p.answer(0, 0xd, 5), [0; 4]);
        assert_ne!(p.answer(0, 7, 0)[1] & L7B_AVX2, 0);
    }

    #[test]
    fn no_xsave_on_the_host_means_none_offered() {
        let bare = |leaf: u32, sub: u32| {
            let mut r = host(leaf, sub);
            if leaf == 1 {
                r[2] = L1C_AVX;
            }
            r
        };
        let p = CpuidPolicy::new(bare, 1, Provided::default());
        assert_eq!(p.xcr0_supported(), 0);
        assert_eq!(p.answer(0, 1, 0)[2] & (L1C_XSAVE | L1C_AVX), 0);
        assert_eq!(p.answer(0, 0xd, 0), [0; 4]);
        assert_eq!(p.answer(0, 7, 0)[1] & L7B_AVX2, 0);
    }
}
