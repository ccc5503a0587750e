//! Controllers that drive a VM from the boot core while its vCPUs run: the
//! dirty-log benchmark and exactness test.

pub mod dirtylog;
