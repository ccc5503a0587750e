//! Every emulated form with real encodings (hand-assembled, each checked by
//! what it does), the refusals, and the flags against the host CPU's own.

extern crate std;

use super::*;
use std::vec;
use std::vec::Vec;

/// A 4 KiB device page at `BASE` that logs accesses and reads back what
/// was written (initially 0xA0 + offset in each byte).
struct Dev {
    page: Vec<u8>,
    log: Vec<(char, u64, Vec<u8>)>,
}

const BASE: u64 = 0xfee0_0000;
const GPA: u64 = BASE + 0x20;

impl Dev {
    fn new() -> Self {
        Dev {
            page: (0..4096).map(|i| 0xa0u8.wrapping_add(i as u8)).collect(),
            log: Vec::new(),
        }
    }
    fn set(&mut self, gpa: u64, bytes: &[u8]) {
        let o = (gpa - BASE) as usize;
        self.page[o..o + bytes.len()].copy_from_slice(bytes);
    }
    fn writes(&self) -> Vec<(u64, Vec<u8>)> {
        self.log
            .iter()
            .filter(|e| e.0 == 'w')
            .map(|e| (e.1, e.2.clone()))
            .collect()
    }
}

impl Mmio for Dev {
    fn read(&mut self, gpa: u64, data: &mut [u8]) {
        let o = (gpa - BASE) as usize;
        data.copy_from_slice(&self.page[o..o + data.len()]);
        self.log.push(('r', gpa, data.to_vec()));
    }
    fn write(&mut self, gpa: u64, data: &[u8]) {
        self.set(gpa, data);
        self.log.push(('w', gpa, data.to_vec()));
    }
}

const RIP: u64 = 0x40_1000;
const FLAGS0: u64 = 0x202 | RFLAGS_ARITH;

struct Run {
    gprs: Gprs,
    rsp: u64,
    rip: u64,
    rflags: u64,
    dev: Dev,
    result: Result<Emulated, EmulateError>,
}

/// Emulates `bytes` in `bits`-bit code against a fresh device, with RBX
/// (the usual base) = GPA and the other registers from `setup`.
fn run_with(
    bits: u32,
    bytes: &[u8],
    segs: SegmentBases,
    access: MmioAccess,
    setup: impl FnOnce(&mut Gprs, &mut Dev),
) -> Run {
    let mut gprs = Gprs {
        rbx: GPA,
        ..Gprs::default()
    };
    let mut dev = Dev::new();
    setup(&mut gprs, &mut dev);
    let mut regs = Regs {
        gprs: &mut gprs,
        rsp: 0x8000,
        rip: RIP,
        rflags: FLAGS0,
    };
    let result = emulate(bytes, bits, access, &segs, &mut regs, &mut dev);
    let (rsp, rip, rflags) = (regs.rsp, regs.rip, regs.rflags);
    Run {
        gprs,
        rsp,
        rip,
        rflags,
        dev,
        result,
    }
}

fn at(gpa: u64) -> MmioAccess {
    MmioAccess { gpa, linear: None }
}

fn run64(bytes: &[u8], setup: impl FnOnce(&mut Gprs, &mut Dev)) -> Run {
    run_with(64, bytes, SegmentBases::default(), at(GPA), setup)
}

/// Ran, moved RIP past `bytes`, left the flags alone.
fn ok(r: &Run, bytes: &[u8]) {
    let e = r.result.expect("emulated");
    assert_eq!(e.len, bytes.len(), "length of {bytes:02x?}");
    assert_eq!(r.rip, RIP + bytes.len() as u64);
}

fn ok_no_flags(r: &Run, bytes: &[u8]) {
    ok(r, bytes);
    assert_eq!(r.rflags, FLAGS0, "MOV forms leave RFLAGS alone");
}

#[test]
fn mov_stores_at_every_width() {
    let val = 0x1122_3344_5566_7788u64;
    for (bytes, want) in [
        (&[0x88, 0x03][..], vec![0x88]),                      // mov [rbx], al
        (&[0x88, 0x23][..], vec![0x77]),                      // mov [rbx], ah
        (&[0x66, 0x89, 0x03][..], vec![0x88, 0x77]),          // mov [rbx], ax
        (&[0x89, 0x03][..], val.to_le_bytes()[..4].to_vec()), // mov [rbx], eax
        (&[0x48, 0x89, 0x03][..], val.to_le_bytes().to_vec()), // mov [rbx], rax
        (&[0x44, 0x88, 0x03][..], vec![0x99]),                // mov [rbx], r8b
        (&[0x40, 0x88, 0x23][..], vec![0x00]),                // mov [rbx], spl (REX: not AH)
        (&[0x4c, 0x89, 0x3b][..], 0xf0f0u64.to_le_bytes().to_vec()), // mov [rbx], r15
    ] {
        let r = run64(bytes, |g, _| {
            g.rax = val;
            g.r8 = 0x99;
            g.r15 = 0xf0f0;
        });
        ok_no_flags(&r, bytes);
        assert_eq!(r.dev.writes(), vec![(GPA, want)], "{bytes:02x?}");
    }
}

#[test]
fn mov_loads_merge_or_zero_extend() {
    let old = 0xdead_beef_cafe_f00d_u64;
    let dev_bytes = [0x11, 0x22, 0x33, 0x84, 0x55, 0x66, 0x77, 0x88];
    for (bytes, reg, want) in [
        // mov al, [rbx]: merges bits 7:0.
        (&[0x8a, 0x03][..], 0, 0xdead_beef_cafe_f011),
        // mov ah, [rbx]: merges bits 15:8.
        (&[0x8a, 0x23][..], 0, 0xdead_beef_cafe_110d),
        // mov ax, [rbx]: merges bits 15:0.
        (&[0x66, 0x8b, 0x03][..], 0, 0xdead_beef_cafe_2211),
        // mov eax, [rbx]: zero-extends.
        (&[0x8b, 0x03][..], 0, 0x8433_2211),
        // mov rax, [rbx].
        (&[0x48, 0x8b, 0x03][..], 0, 0x8877_6655_8433_2211),
        // mov r9b, [rbx]; mov r9d, [rbx].
        (&[0x44, 0x8a, 0x0b][..], 9, 0xdead_beef_cafe_f011),
        (&[0x44, 0x8b, 0x0b][..], 9, 0x8433_2211),
        // mov sil, [rbx] (REX 40: SIL, not DH).
        (&[0x40, 0x8a, 0x33][..], 6, 0xdead_beef_cafe_f011),
        // mov dh, [rbx] (no REX).
        (&[0x8a, 0x33][..], 2, 0xdead_beef_cafe_110d),
        // mov esp, [rbx]: RSP is in the VMCS, a field of Regs.
        (&[0x8b, 0x23][..], 4, 0x8433_2211),
    ] {
        let mut r = run64(bytes, |g, d| {
            for i in [0, 2, 6, 9] {
                *g.gpr_mut(i).unwrap() = old;
            }
            d.set(GPA, &dev_bytes);
        });
        ok_no_flags(&r, bytes);
        let got = if reg == 4 {
            r.rsp
        } else {
            *r.gprs.gpr_mut(reg).unwrap()
        };
        assert_eq!(got, want, "{bytes:02x?}");
        assert!(r.dev.writes().is_empty());
    }
}

#[test]
fn mov_immediates_sign_extend_to_64_bits() {
    for (bytes, want) in [
        (&[0xc6, 0x03, 0x5a][..], vec![0x5a]), // mov byte [rbx], 0x5a
        (&[0x66, 0xc7, 0x03, 0x34, 0x12][..], vec![0x34, 0x12]), // mov word [rbx], 0x1234
        (
            &[0xc7, 0x03, 0x78, 0x56, 0x34, 0x12][..],
            vec![0x78, 0x56, 0x34, 0x12],
        ),
        (
            &[0x48, 0xc7, 0x03, 0xff, 0xff, 0xff, 0xff][..],
            vec![0xff; 8],
        ), // mov qword [rbx], -1
        (
            &[0x48, 0xc7, 0x03, 0x01, 0, 0, 0][..],
            vec![1, 0, 0, 0, 0, 0, 0, 0],
        ),
    ] {
        let r = run64(bytes, |_, _| {});
        ok_no_flags(&r, bytes);
        assert_eq!(r.dev.writes(), vec![(GPA, want)], "{bytes:02x?}");
    }
}

#[test]
fn movzx_movsx_movsxd() {
    for (bytes, byte, want) in [
        (&[0x0f, 0xb6, 0x03][..], 0x80u8, 0x80u64), // movzx eax, byte [rbx]
        (&[0x0f, 0xb7, 0x03][..], 0x80, 0x9180),    // movzx eax, word [rbx]
        (&[0x48, 0x0f, 0xbe, 0x03][..], 0x80, 0xffff_ffff_ffff_ff80), // movsx rax, byte
        (&[0x0f, 0xbe, 0x03][..], 0x80, 0xffff_ff80), // movsx eax, byte: zero-extended above
        (&[0x0f, 0xbf, 0x03][..], 0x80, 0xffff_9180), // movsx eax, word (0x9180)
        (&[0x66, 0x0f, 0xbe, 0x03][..], 0x80, 0x5555_5555_5555_ff80), // movsx ax, byte: merge
        (&[0x48, 0x63, 0x03][..], 0x80, 0xffff_ffff_9392_9180), // movsxd rax, dword
    ] {
        let r = run64(bytes, |g, d| {
            g.rax = 0x5555_5555_5555_5555;
            d.set(GPA, &[byte, 0x91, 0x92, 0x93]);
        });
        ok_no_flags(&r, bytes);
        assert_eq!(r.gprs.rax, want, "{bytes:02x?}");
    }
}

#[test]
fn moffs_forms() {
    let a = GPA.to_le_bytes();
    // 64-bit: 8-byte moffs.
    let load = [&[0xa1][..], &a].concat(); // mov eax, [moffs64]
    let r = run64(&load, |g, d| {
        g.rbx = 0;
        g.rax = u64::MAX;
        d.set(GPA, &[1, 2, 3, 4]);
    });
    ok_no_flags(&r, &load);
    assert_eq!(r.gprs.rax, 0x0403_0201);
    let store = [&[0x48, 0xa3][..], &a].concat(); // mov [moffs64], rax
    let r = run64(&store, |g, _| g.rax = 0x0807_0605_0403_0201);
    ok_no_flags(&r, &store);
    assert_eq!(r.dev.writes(), vec![(GPA, vec![1, 2, 3, 4, 5, 6, 7, 8])]);
    let store8 = [&[0xa2][..], &a].concat(); // mov [moffs64], al
    let r = run64(&store8, |g, _| g.rax = 0x42);
    ok_no_flags(&r, &store8);
    assert_eq!(r.dev.writes(), vec![(GPA, vec![0x42])]);
    let load8 = [&[0xa0][..], &a].concat(); // mov al, [moffs64]
    let r = run64(&load8, |g, _| g.rax = 0xff00);
    assert_eq!(r.gprs.rax, 0xffc0);
    // 32-bit: 4-byte moffs, DS base added.
    let ds = SegmentBases([0, 0, 0, 0x1000, 0, 0]);
    let store = [&[0xa3][..], &((GPA - 0x1000) as u32).to_le_bytes()].concat();
    let r = run_with(32, &store, ds, at(GPA), |g, _| g.rax = 0x1234_5678);
    ok_no_flags(&r, &store);
    assert_eq!(r.dev.writes(), vec![(GPA, vec![0x78, 0x56, 0x34, 0x12])]);
}

#[test]
fn alu_read_modify_write_forms() {
    // (bytes, device dword, rax, expected device dword, flags set)
    let cases: &[(&[u8], u32, u64, u32, u64)] = &[
        // or dword [rbx], 0x100
        (&[0x81, 0x0b, 0x00, 0x01, 0, 0], 0x1, 0, 0x101, 0),
        // and dword [rbx], -2 (imm8 sign-extended)
        (
            &[0x83, 0x23, 0xfe],
            0x8000_0001,
            0,
            0x8000_0000,
            RFLAGS_SF | RFLAGS_PF,
        ),
        // lock or [rbx], eax
        (&[0xf0, 0x09, 0x03], 0x10, 0x01, 0x11, RFLAGS_PF),
        // xor dword [rbx], eax → 0
        (&[0x31, 0x03], 0x55, 0x55, 0, RFLAGS_ZF | RFLAGS_PF),
        // add dword [rbx], 1: signed overflow
        (
            &[0x83, 0x03, 0x01],
            0x7fff_ffff,
            0,
            0x8000_0000,
            RFLAGS_OF | RFLAGS_SF | RFLAGS_AF | RFLAGS_PF,
        ),
        // add [rbx], eax: carry out
        (
            &[0x01, 0x03],
            0xffff_ffff,
            1,
            0,
            RFLAGS_CF | RFLAGS_ZF | RFLAGS_AF | RFLAGS_PF,
        ),
        // sub [rbx], eax: borrow
        (
            &[0x29, 0x03],
            1,
            2,
            0xffff_ffff,
            RFLAGS_CF | RFLAGS_SF | RFLAGS_AF | RFLAGS_PF,
        ),
        // lock sub dword [rbx], 1
        (
            &[0xf0, 0x83, 0x2b, 0x01],
            0x10,
            0,
            0xf,
            RFLAGS_AF | RFLAGS_PF,
        ),
    ];
    for &(bytes, dev, rax, want, flags) in cases {
        let r = run64(bytes, |g, d| {
            g.rax = rax;
            d.set(GPA, &dev.to_le_bytes());
        });
        ok(&r, bytes);
        assert_eq!(
            r.dev.writes(),
            vec![(GPA, want.to_le_bytes().to_vec())],
            "{bytes:02x?}"
        );
        assert_eq!(r.rflags, 0x202 | flags, "flags of {bytes:02x?}");
        assert_eq!(r.dev.log[0].0, 'r', "read before write");
    }
    // Byte and word forms: xor byte [rbx], 0x80; and word [rbx], 0x00ff.
    let r = run64(&[0x80, 0x33, 0x80], |_, d| d.set(GPA, &[0x81]));
    assert_eq!(r.dev.writes(), vec![(GPA, vec![0x01])]);
    assert_eq!(r.rflags, 0x202, "PF clear: one bit set");
    let r = run64(&[0x66, 0x81, 0x23, 0xff, 0x00], |_, d| {
        d.set(GPA, &[0x34, 0x12])
    });
    assert_eq!(r.dev.writes(), vec![(GPA, vec![0x34, 0x00])]);
    // A memory source into a register: add eax, [rbx]; or r10, [rbx].
    let r = run64(&[0x03, 0x03], |g, d| {
        g.rax = 0xffff_ffff_0000_0001;
        d.set(GPA, &[1, 0, 0, 0]);
    });
    ok(&r, &[0x03, 0x03]);
    assert_eq!(r.gprs.rax, 2, "32-bit destination zero-extended");
    assert!(r.dev.writes().is_empty());
    let r = run64(&[0x4c, 0x0b, 0x13], |g, d| {
        g.r10 = 0x100;
        d.set(GPA, &[1, 0, 0, 0, 0, 0, 0, 0x80]);
    });
    assert_eq!(r.gprs.r10, 0x8000_0000_0000_0101);
    assert_eq!(r.rflags, 0x202 | RFLAGS_SF);
}

#[test]
fn xchg_swaps_register_and_device() {
    // xchg [rbx], eax; xchg cl, [rbx] (86 0b); lock xchg [rbx], rax.
    let r = run64(&[0x87, 0x03], |g, d| {
        g.rax = 0xffff_ffff_1111_1111;
        d.set(GPA, &[0x22, 0x22, 0x22, 0x22]);
    });
    ok_no_flags(&r, &[0x87, 0x03]);
    assert_eq!(r.gprs.rax, 0x2222_2222, "zero-extended");
    assert_eq!(r.dev.writes(), vec![(GPA, vec![0x11; 4])]);
    let r = run64(&[0x86, 0x0b], |g, d| {
        g.rcx = 0x1234;
        d.set(GPA, &[0x99]);
    });
    assert_eq!(r.gprs.rcx, 0x1299);
    assert_eq!(r.dev.writes(), vec![(GPA, vec![0x34])]);
    let r = run64(&[0xf0, 0x48, 0x87, 0x03], |g, _| g.rax = 5);
    assert!(r.result.is_ok(), "{:?}", r.result);
    assert_eq!(r.dev.writes(), vec![(GPA, vec![5, 0, 0, 0, 0, 0, 0, 0])]);
}

#[test]
fn cmp_and_test_only_set_flags() {
    let cases: &[(&[u8], u32, u64, u64)] = &[
        // cmp dword [rbx], 5 (equal)
        (&[0x83, 0x3b, 0x05], 5, 0, RFLAGS_ZF | RFLAGS_PF),
        // cmp dword [rbx], 6 (below)
        (
            &[0x83, 0x3b, 0x06],
            5,
            0,
            RFLAGS_CF | RFLAGS_SF | RFLAGS_AF | RFLAGS_PF,
        ),
        // cmp eax, [rbx]: eax - mem
        (&[0x3b, 0x03], 5, 6, 0),
        // cmp [rbx], eax: mem - eax
        (
            &[0x39, 0x03],
            5,
            6,
            RFLAGS_CF | RFLAGS_SF | RFLAGS_AF | RFLAGS_PF,
        ),
        // test dword [rbx], 0x10
        (&[0xf7, 0x03, 0x10, 0, 0, 0], 0x10, 0, 0),
        (&[0xf7, 0x03, 0x10, 0, 0, 0], 0x20, 0, RFLAGS_ZF | RFLAGS_PF),
        // test [rbx], al; test byte [rbx], 0x80
        (&[0x84, 0x03], 0x81, 0x80, RFLAGS_SF),
        (&[0xf6, 0x03, 0x80], 0x7f, 0, RFLAGS_ZF | RFLAGS_PF),
    ];
    for &(bytes, dev, rax, flags) in cases {
        let r = run64(bytes, |g, d| {
            g.rax = rax;
            d.set(GPA, &dev.to_le_bytes());
        });
        ok(&r, bytes);
        assert!(r.dev.writes().is_empty(), "{bytes:02x?} wrote");
        assert_eq!(r.gprs.rax, rax);
        assert_eq!(r.rflags, 0x202 | flags, "flags of {bytes:02x?}");
    }
}

#[test]
fn code_size_and_prefixes_in_32_and_16_bit_code() {
    let ds = SegmentBases([0, 0, 0, 0x1000, 0, 0]);
    // 32-bit: mov [ebx+4], eax with a DS base; 66: mov [ebx], ax.
    let r = run_with(32, &[0x89, 0x43, 0x04], ds, at(GPA), |g, _| {
        g.rbx = GPA - 0x1004;
        g.rax = 0xaabb_ccdd;
    });
    ok(&r, &[0x89, 0x43, 0x04]);
    assert_eq!(r.dev.writes(), vec![(GPA, vec![0xdd, 0xcc, 0xbb, 0xaa])]);
    let r = run_with(32, &[0x66, 0x89, 0x03], ds, at(GPA), |g, _| {
        g.rbx = GPA - 0x1000;
        g.rax = 0xaabb_ccdd;
    });
    assert_eq!(r.dev.writes(), vec![(GPA, vec![0xdd, 0xcc])]);
    // In 32-bit code, 48 is DEC EAX, not REX: a different instruction
    // with no memory operand.
    let r = run_with(32, &[0x48, 0x89, 0x03], ds, at(GPA), |_, _| {});
    assert!(matches!(r.result, Err(EmulateError::Unsupported { .. })));
    // 16-bit (real mode: DS base = segment × 16): mov [bx+si], ax; with
    // 66, EAX; with 67, a 32-bit address [ebx].
    let rm = SegmentBases([0, 0, 0, BASE - 0x8000, 0, 0]);
    let (bx, si) = (0x4000u64, 0x4020u64);
    let la = GPA;
    let acc = at(la);
    let r = run_with(16, &[0x89, 0x00], rm, acc, |g, _| {
        g.rbx = bx;
        g.rsi = si;
        g.rax = 0x1234_5678;
    });
    assert_eq!(r.rip, (RIP + 2) & 0xffff, "IP is 16 bits");
    assert_eq!(r.dev.writes(), vec![(la, vec![0x78, 0x56])]);
    let r = run_with(16, &[0x66, 0x89, 0x00], rm, acc, |g, _| {
        g.rbx = bx;
        g.rsi = si;
        g.rax = 0x1234_5678;
    });
    assert_eq!(r.dev.writes(), vec![(la, vec![0x78, 0x56, 0x34, 0x12])]);
    let r = run_with(16, &[0x67, 0x89, 0x03], rm, acc, |g, _| {
        g.rbx = bx + si;
        g.rax = 0x1234_5678;
    });
    assert_eq!(r.result.unwrap().len, 3);
    assert_eq!(r.dev.writes(), vec![(la, vec![0x78, 0x56])]);
    // 16-bit addresses wrap at 64 KiB: [bx+si] with bx + si = 0x1_0020.
    let rm = SegmentBases([0, 0, 0, BASE, 0, 0]);
    let r = run_with(16, &[0x89, 0x00], rm, at(GPA), |g, _| {
        g.rbx = 0xffff;
        g.rsi = 0x21;
    });
    assert!(r.result.is_ok(), "{:?}", r.result);
}

#[test]
fn ip_wraps_at_the_code_size() {
    let mut gprs = Gprs {
        rbx: GPA,
        ..Gprs::default()
    };
    let mut regs = Regs {
        gprs: &mut gprs,
        rsp: 0,
        rip: 0xfffe,
        rflags: 2,
    };
    let segs = SegmentBases([0, 0, 0, 0, 0, 0]);
    // mov [ebx], eax in 16-bit code: 67 66 89 03, IP 0xfffe → 2.
    let r = emulate(
        &[0x67, 0x66, 0x89, 0x03],
        16,
        at(GPA),
        &segs,
        &mut regs,
        &mut Dev::new(),
    );
    assert_eq!(r.unwrap().len, 4);
    assert_eq!(regs.rip, 2);
    regs.rip = 0xffff_fffe;
    emulate(
        &[0x89, 0x03],
        32,
        at(GPA),
        &segs,
        &mut regs,
        &mut Dev::new(),
    )
    .unwrap();
    assert_eq!(regs.rip, 0);
}

#[test]
fn rip_relative_operands_use_the_next_rip() {
    // mov eax, [rip + 0x1a]: next RIP 0x40_1006, operand at 0x40_1020,
    // the page offset of GPA.
    let bytes = [0x8b, 0x05, 0x1a, 0, 0, 0];
    let r = run64(&bytes, |_, d| d.set(GPA, &[7, 0, 0, 0]));
    ok(&r, &bytes);
    assert_eq!(r.gprs.rax, 7);
    let acc = MmioAccess {
        gpa: GPA,
        linear: Some(RIP + 0x20),
    };
    let r = run_with(64, &bytes, SegmentBases::default(), acc, |_, _| {});
    assert!(r.result.is_ok());
}

#[test]
fn fs_and_gs_bases_count_in_64_bit_mode_the_others_do_not() {
    let segs = SegmentBases([0x10, 0x10, 0x10, 0x10, 0x1000, 0x2000]);
    // mov [rbx], eax with DS base 0x10: ignored in 64-bit mode.
    let r = run_with(64, &[0x89, 0x03], segs, at(GPA), |_, _| {});
    assert!(r.result.is_ok());
    // mov gs:[rbx], eax: GS base added.
    let r = run_with(64, &[0x65, 0x89, 0x03], segs, at(GPA), |g, _| {
        g.rbx = GPA - 0x2000
    });
    assert!(r.result.is_ok(), "{:?}", r.result);
    // The exit's linear address is checked exactly when given.
    let acc = MmioAccess {
        gpa: GPA,
        linear: Some(GPA),
    };
    let r = run_with(64, &[0x64, 0x89, 0x03], segs, acc, |g, _| {
        g.rbx = GPA - 0x1000
    });
    assert!(r.result.is_ok());
    let acc = MmioAccess {
        gpa: GPA,
        linear: Some(0x7000_0020),
    };
    let r = run_with(64, &[0x89, 0x03], segs, acc, |_, _| {});
    assert!(matches!(
        r.result,
        Err(EmulateError::AddressMismatch { .. })
    ));
}

#[test]
fn refusals_carry_the_bytes() {
    let cases: &[(&[u8], &str)] = &[
        (&[0xa4], "string instruction"),            // movsb
        (&[0x0f, 0xc1, 0x03], "form not emulated"), // xadd [rbx], eax
        (&[0x0f, 0x10, 0x03], "not an 8/16/32/64-bit integer access"), // movups xmm0, [rbx]
        (&[0x0f, 0x0b], "no memory operand"),       // ud2
        (&[0x0f, 0xa3, 0x03], "form not emulated"), // bt [rbx], eax
        (&[0x8c, 0x1b], "not a general register"),  // mov [rbx], ds
        (&[0xff, 0x03], "not a two-operand form"),  // inc dword [rbx]
    ];
    for &(bytes, why) in cases {
        let r = run64(bytes, |_, _| {});
        match r.result {
            Err(e @ EmulateError::Unsupported { why: w, .. }) => {
                assert_eq!(w, why, "{bytes:02x?}");
                assert_eq!(e.bytes().as_slice(), bytes);
                assert!(std::format!("{e}").contains(&std::format!("{}", InsnBytes::new(bytes))));
            }
            other => panic!("{bytes:02x?}: {other:?}"),
        }
        assert_eq!(r.rip, RIP, "RIP stays");
        assert!(r.dev.log.is_empty(), "device untouched");
    }
    // mov ds, [rbx]: a segment register destination.
    let r = run64(&[0x8e, 0x1b], |_, _| {});
    assert!(
        matches!(r.result, Err(EmulateError::Unsupported { .. })),
        "{:?}",
        r.result
    );
    // Invalid in 64-bit mode (PUSH ES), LOCK on MOV, and too few bytes.
    let r = run64(&[0x06, 0x90], |_, _| {});
    assert_eq!(
        r.result,
        Err(EmulateError::Invalid {
            bytes: InsnBytes::new(&[0x06, 0x90])
        })
    );
    let r = run64(&[0xf0, 0x89, 0x03], |_, _| {});
    assert!(matches!(r.result, Err(EmulateError::Invalid { .. })));
    let r = run64(&[0xc7, 0x03, 0x78], |_, _| {});
    assert!(matches!(r.result, Err(EmulateError::Truncated { .. })));
    // Bytes print as hex.
    assert_eq!(
        std::format!("{}", InsnBytes::new(&[0x48, 0x89, 0x03])),
        "48 89 03"
    );
}

#[test]
fn address_checks() {
    // mov [rbx+8], eax: linear page offset 0x28, the exit says 0x20.
    let r = run64(&[0x89, 0x43, 0x08], |_, _| {});
    assert!(
        matches!(r.result, Err(EmulateError::AddressMismatch { linear, .. }) if linear == GPA + 8)
    );
    // An access that runs past the page.
    let r = run_with(
        64,
        &[0x48, 0x89, 0x03],
        SegmentBases::default(),
        at(BASE + 0xffc),
        |g, _| g.rbx = BASE + 0xffc,
    );
    assert!(matches!(
        r.result,
        Err(EmulateError::Unsupported {
            why: "access crosses a page boundary",
            ..
        })
    ));
}

#[test]
fn code_bitness_follows_the_sdm() {
    use crate::x86::{CR0_PE, EFER_LMA};
    let (l, d) = (1 << 13, 1 << 14);
    assert_eq!(code_bitness(0, 0, 2, d), 16, "real mode");
    assert_eq!(
        code_bitness(CR0_PE, 0, 2 | (1 << 17), d),
        16,
        "virtual-8086"
    );
    assert_eq!(code_bitness(CR0_PE, 0, 2, d), 32);
    assert_eq!(code_bitness(CR0_PE, 0, 2, 0), 16);
    assert_eq!(code_bitness(CR0_PE, EFER_LMA, 2, l), 64);
    assert_eq!(
        code_bitness(CR0_PE, EFER_LMA, 2, d),
        32,
        "compatibility mode"
    );
    assert_eq!(
        code_bitness(CR0_PE, 0, 2, l | d),
        32,
        "L ignored outside IA-32e"
    );
}

/// The result and arithmetic flags of the host CPU's own instruction.
#[cfg(target_arch = "x86_64")]
fn host_flags(op: Alu, a: u64, b: u64, size: usize) -> (u64, u64) {
    macro_rules! run {
        ($insn:literal, $a:expr, $b:expr, $class:ident, $m:literal) => {{
            let mut r = $a;
            let f: u64;
            // SAFETY: register-only arithmetic and a PUSHF/POP pair.
            unsafe {
                core::arch::asm!(
                    concat!($insn, " {r", $m, "}, {b", $m, "}"),
                    "pushfq",
                    "pop {f}",
                    r = inout($class) r,
                    b = in($class) $b,
                    f = out(reg) f,
                )
            };
            (r as u64, f & RFLAGS_ARITH)
        }};
    }
    macro_rules! sized {
        ($insn:literal) => {
            match size {
                1 => run!($insn, a as u8, b as u8, reg_byte, ""),
                2 => run!($insn, a as u16, b as u16, reg, ":x"),
                4 => run!($insn, a as u32, b as u32, reg, ":e"),
                _ => run!($insn, a, b, reg, ""),
            }
        };
    }
    match op {
        Alu::Add => sized!("add"),
        Alu::Sub => sized!("sub"),
        Alu::And => sized!("and"),
        Alu::Or => sized!("or"),
        Alu::Xor => sized!("xor"),
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn flags_match_the_host_cpu() {
    let vals = [
        0u64,
        1,
        2,
        0x7f,
        0x80,
        0xff,
        0x100,
        0x7fff,
        0x8000,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        0x1_0000_0000,
        0x7fff_ffff_ffff_ffff,
        0x8000_0000_0000_0000,
        u64::MAX,
        0x0f0f_0f0f_0f0f_0f0f,
        0x1234_5678_9abc_def0,
    ];
    for op in [Alu::Add, Alu::Sub, Alu::And, Alu::Or, Alu::Xor] {
        for size in [1, 2, 4, 8] {
            for &a in &vals {
                for &b in &vals {
                    let m = mask(size);
                    let (hr, mut hf) = host_flags(op, a & m, b & m, size);
                    let (r, mut f) = alu(op, a, b, size);
                    if matches!(op, Alu::And | Alu::Or | Alu::Xor) {
                        // AF is undefined for logic ops (SDM).
                        hf &= !RFLAGS_AF;
                        f &= !RFLAGS_AF;
                    }
                    assert_eq!(r, hr & m, "{op:?} {a:#x} {b:#x} size {size}");
                    assert_eq!(f, hf, "{op:?} {a:#x} {b:#x} size {size}");
                }
            }
        }
    }
}
