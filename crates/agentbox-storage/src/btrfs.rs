//! The syscall seam of btrfs: subvolumes (one per layer), their quota groups, and the filesystem's id.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BTRFS_IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940e;
const BTRFS_IOC_SNAP_DESTROY: libc::c_ulong = 0x5000_940f;
const BTRFS_IOC_INO_LOOKUP: libc::c_ulong = 0xd000_9412;
const BTRFS_IOC_FS_INFO: libc::c_ulong = 0x8400_941f;
const BTRFS_IOC_QGROUP_CREATE: libc::c_ulong = 0x4010_942a;
const BTRFS_IOC_QGROUP_LIMIT: libc::c_ulong = 0x8030_942b;
const BTRFS_IOC_SNAP_CREATE_V2: libc::c_ulong = 0x5000_9417;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2`.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_create_args`.
#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

fn ioctl<T>(fd: BorrowedFd<'_>, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes the struct the request number encodes, by a unique reference.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_mut(arg)) } == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn vol_args(name: &CStr) -> io::Result<Box<VolArgs>> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.len() >= 4088 || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut args = Box::new(VolArgs { fd: 0, name: [0; 4088] });
    args.name[..bytes.len()].copy_from_slice(bytes);
    Ok(args)
}

/// Creates subvolume `name` in the directory `parent`.
pub fn create_subvolume(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let mut args = vol_args(name)?;
    ioctl(parent, BTRFS_IOC_SUBVOL_CREATE, &mut *args)
}

/// Whether a snapshot can be written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snap {
    /// Read-only: a point-in-time copy nothing changes.
    ReadOnly,
    /// Writable: a new layer starting from the source's contents.
    Writable,
}

/// Snapshots the subvolume `source` as `name` in the directory `parent`: atomic, and sharing every extent with
/// the source until either side changes it.
pub fn snapshot(source: BorrowedFd<'_>, parent: BorrowedFd<'_>, name: &CStr, kind: Snap) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.len() >= 4040 || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut args = Box::new(VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if kind == Snap::ReadOnly { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; 4040],
    });
    args.name[..bytes.len()].copy_from_slice(bytes);
    ioctl(parent, BTRFS_IOC_SNAP_CREATE_V2, &mut *args)
}

/// Deletes subvolume `name` in the directory `parent`, with everything in it.
pub fn delete_subvolume(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let mut args = vol_args(name)?;
    ioctl(parent, BTRFS_IOC_SNAP_DESTROY, &mut *args)
}

/// The id of the subvolume `fd` is in.
pub fn subvolume_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut args = Box::new(InoLookupArgs { treeid: 0, objectid: BTRFS_FIRST_FREE_OBJECTID, name: [0; 4080] });
    ioctl(fd, BTRFS_IOC_INO_LOOKUP, &mut *args)?;
    Ok(args.treeid)
}

/// Limits what subvolume `id` references to `bytes` (its level-0 quota group).
pub fn limit(fs: BorrowedFd<'_>, id: u64, bytes: u64) -> io::Result<()> {
    let mut args = QgroupLimitArgs {
        qgroupid: id,
        flags: BTRFS_QGROUP_LIMIT_MAX_RFER,
        max_rfer: bytes,
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    ioctl(fs, BTRFS_IOC_QGROUP_LIMIT, &mut args)
}

/// Removes the quota group of a deleted subvolume (best effort: the kernel may have done it).
pub fn remove_qgroup(fs: BorrowedFd<'_>, id: u64) -> io::Result<()> {
    let mut args = QgroupCreateArgs { create: 0, qgroupid: id };
    ioctl(fs, BTRFS_IOC_QGROUP_CREATE, &mut args)
}

/// The filesystem's id as `/sys/fs/btrfs/` names it.
pub fn fsid(fs: BorrowedFd<'_>) -> io::Result<String> {
    let mut buf = Box::new([0u8; 1024]);
    ioctl(fs, BTRFS_IOC_FS_INFO, &mut *buf)?;
    let f = &buf[16..32];
    let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
}
