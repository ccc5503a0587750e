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
pub use crate::boot::abi::CPUID_SIGNATURE as SIGNATURE;
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
/// MSRs behind them yet), and XSAVE with everything that needs XCR0 (XSETBV
/// is not emulated yet), MONITOR/MWAIT (not intercepted yet).
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
    | L1C_XSAVE
    | L1C_OSXSAVE
    | L1C_AVX
    | L1C_FMA
    | L1C_F16C;

// Leaf 1 EDX.
const L1D_MCE: u32 = bit(7);
const L1D_APIC: u32 = bit(9);
const L1D_MTRR: u32 = bit(12);
const L1D_MCA: u32 = bit(14);
const L1D_DS: u32 = bit(21);
const L1D_ACPI: u32 = bit(22);
const L1D_HTT: u32 = bit(28);
const L1D_TM: u32 = bit(29);
const L1D_PBE: u32 = bit(31);
/// Machine-check, MTRR, debug store, thermal and power MSRs are not
/// emulated; there is no local APIC model yet.
const L1D_HIDDEN: u32 =
    L1D_MCE | L1D_APIC | L1D_MTRR | L1D_MCA | L1D_DS | L1D_ACPI | L1D_TM | L1D_PBE | L1D_HTT;

// Leaf 7 subleaf 0.
/// EBX: TSC_ADJUST, SGX, AVX2 (needs XSAVE), INVPCID (not enabled for the
/// guest on every CPU), RTM/HLE kept out for determinism, PQM/PQE, MPX,
/// AVX-512 (needs XSAVE), Intel PT.
const L7B_HIDDEN: u32 = bit(1)
    | bit(2)
    | bit(4)
    | bit(5)
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
/// EDX: AVX512 extensions, IA32_ARCH_CAPABILITIES and IA32_CORE_CAPABILITIES
/// (MSRs not emulated), hybrid, AMX (needs XSAVE).
const L7D_HIDDEN: u32 =
    bit(2) | bit(3) | bit(8) | bit(15) | bit(22) | bit(24) | bit(25) | bit(29) | bit(30);

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
}

/// The VM's CPUID, filtered once; [`CpuidPolicy::answer`] adds the vCPU.
#[derive(Debug, Clone)]
pub struct CpuidPolicy {
    /// (leaf, subleaf, regs), subleaf `None` when the leaf has none.
    entries: Vec<(u32, Option<u32>, Regs)>,
    max_basic: u32,
    max_ext: u32,
    vcpus: u32,
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
        let max_basic = host(0, 0)[0].min(0x1f);
        let max_ext = host(0x8000_0000, 0)[0].clamp(0x8000_0000, 0x8000_0008);
        let mut entries = Vec::new();
        for leaf in (0..=max_basic).chain(0x8000_0000..=max_ext) {
            if has_subleaves(leaf) {
                for sub in 0..64 {
                    let r = Self::filter(leaf, sub, host(leaf, sub), provided);
                    entries.push((leaf, Some(sub), r));
                }
            } else {
                entries.push((leaf, None, Self::filter(leaf, 0, host(leaf, 0), provided)));
            }
        }
        CpuidPolicy {
            entries,
            max_basic,
            max_ext,
            vcpus: vcpus.max(1),
        }
    }

    /// The host's answer with everything not provided taken out.
    fn filter(leaf: u32, sub: u32, r: Regs, p: Provided) -> Regs {
        let [a, b, c, d] = r;
        match leaf {
            0 => [a.min(0x1f), b, c, d],
            1 => [a, b, (c & !L1C_HIDDEN) | L1C_HYPERVISOR, d & !L1D_HIDDEN],
            // Cache parameters: kept (topology fields patched per vCPU).
            4 => r,
            // MONITOR/MWAIT, thermal/power, perfmon, XSAVE state,
            // resource monitoring, SGX, PT: not provided.
            5 | 6 | 0xa | 0xd | 0xf | 0x10 | 0x12 | 0x14 => [0; 4],
            7 if sub == 0 => [a, b & !L7B_HIDDEN, c & !L7C_HIDDEN, d & !L7D_HIDDEN],
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

    /// CPUID(`leaf`, `sub`) as vCPU `vcpu` sees it.
    pub fn answer(&self, vcpu: u32, leaf: u32, sub: u32) -> Regs {
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
            // Above the highest leaf: Intel CPUs answer with the highest
            // basic leaf's data (SDM Vol. 2A, CPUID, "INPUT EAX = 0").
            l if l > self.max_basic && l < 0x8000_0000 => self.answer(vcpu, self.max_basic, sub),
            l if l > self.max_ext => self.answer(vcpu, self.max_basic, sub),
            1 => {
                let [a, b, c, mut d] = self.stored(1, 0);
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
            (L1C_XSAVE, "XSAVE"),
            (L1C_OSXSAVE, "OSXSAVE"),
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
        assert_eq!(p.answer(0, 0xd, 1), [0; 4], "no XSAVES");
        assert_eq!(p.answer(0, 0x8000_0001, 0)[3] & E1D_RDTSCP, 0);
        let with = CpuidPolicy::new(
            everything,
            1,
            Provided {
                rdtscp: true,
                gb_pages: true,
            },
        );
        assert_ne!(with.answer(0, 0x8000_0001, 0)[3] & E1D_RDTSCP, 0);
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
