//! The container's seccomp filter. RuntimeDefault is crisp's default profile below: every
//! system call not listed fails with EPERM; those tied to a capability are allowed only when
//! the container's bounding set holds it; `clone` may not make namespaces and `clone3` answers
//! ENOSYS (so that libc falls back to `clone`) without CAP_SYS_ADMIN; `personality` only with
//! the harmless personas. Localhost reads a profile file in the Docker/containerd JSON form
//! (`name` or `names`, `includes`/`excludes` by capability and architecture, `archMap`) and
//! turns it into the OCI form. Unconfined (and no profile at all, as containerd's default) and
//! privileged containers get no filter.

use super::SpecError;
use crisp_proto::cri::{LinuxContainerSecurityContext, SecurityProfile, security_profile::ProfileType};
use oci_spec::runtime::{Capabilities, Capability, LinuxSeccomp};
use serde::Deserialize;
use serde_json::{Value, json};

/// System calls every container may make (the list Docker's and containerd's default profiles
/// agree on, with the calls kernels added since that libc now uses).
const ALLOWED: &str = "
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
    clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2
    dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
    epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
    fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
    fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
    fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64
    futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32
    geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
    getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
    get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday
    getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
    io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get
    ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset
    landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr llistxattr
    _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier
    memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2
    mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
    mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall
    munmap nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
    pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl
    pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev
    pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64
    recvmsg remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
    rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
    sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
    sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
    sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
    semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
    setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit
    set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 setxattr
    shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socket
    socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync
    sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
    timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
    timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit
    umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4
    waitid waitpid write writev
";

/// System calls allowed only to a container whose bounding set holds the capability.
const BY_CAPABILITY: [(&str, &str); 12] = [
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    (
        "CAP_SYS_ADMIN",
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount \
         mount_setattr move_mount name_to_handle_at open_tree perf_event_open quotactl quotactl_fd setdomainname \
         sethostname setns syslog umount umount2 unshare",
    ),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"),
    ("CAP_SYS_PACCT", "acct"),
    ("CAP_SYS_PTRACE", "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace"),
    ("CAP_SYS_RAWIO", "iopl ioperm"),
    ("CAP_SYS_TIME", "settimeofday stime clock_settime clock_settime64"),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    ("CAP_SYS_NICE", "get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
    ("CAP_SYSLOG", "syslog"),
];

/// The namespace flags `clone` may not be given without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// ENOSYS and EPERM.
const ENOSYS: u32 = 38;
const EPERM: u32 = 1;

/// This machine's architecture as Go and profile files name it, and its seccomp architectures.
fn host_arch() -> (&'static str, &'static [&'static str]) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        "aarch64" => ("arm64", &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        "s390x" => ("s390x", &["SCMP_ARCH_S390X", "SCMP_ARCH_S390"]),
        "riscv64" => ("riscv64", &["SCMP_ARCH_RISCV64"]),
        other => (other, &[]),
    }
}

/// System calls of one architecture only.
fn arch_calls(arch: &str) -> &'static str {
    match arch {
        "amd64" => "arch_prctl modify_ldt",
        "arm64" => "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
        "s390x" => "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr",
        "riscv64" => "riscv_flush_icache",
        _ => "",
    }
}

/// A profile in the Docker/containerd JSON form (a superset of the OCI one).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<String>,
    listener_path: Option<String>,
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    name: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    action: String,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

fn has(bounding: &Capabilities, name: &str) -> bool {
    super::security::parse_capability(name).is_some_and(|c: Capability| bounding.contains(&c))
}

/// `profile` for a container with the bounding set `bounding`, in the OCI form.
fn to_oci(profile: Profile, bounding: &Capabilities, field: &str) -> Result<LinuxSeccomp, SpecError> {
    let (arch, native) = host_arch();
    let mut architectures = profile.architectures;
    for map in &profile.arch_map {
        if native.first() == Some(&map.architecture.as_str()) {
            architectures.push(map.architecture.clone());
            architectures.extend(map.sub_architectures.iter().cloned());
        }
    }
    let mut syscalls = vec![];
    for rule in profile.syscalls {
        let included = rule.includes.caps.iter().all(|c| has(bounding, c))
            && (rule.includes.arches.is_empty() || rule.includes.arches.iter().any(|a| a == arch));
        let excluded =
            rule.excludes.caps.iter().any(|c| has(bounding, c)) || rule.excludes.arches.iter().any(|a| a == arch);
        if !included || excluded {
            continue;
        }
        let mut names = rule.names;
        names.extend(rule.name);
        if names.is_empty() {
            continue;
        }
        let mut call = json!({ "names": names, "action": rule.action });
        if let Some(errno) = rule.errno_ret {
            call["errnoRet"] = json!(errno);
        }
        if !rule.args.is_empty() {
            call["args"] = Value::Array(rule.args);
        }
        syscalls.push(call);
    }
    let mut oci = json!({ "defaultAction": profile.default_action, "syscalls": syscalls });
    if let Some(errno) = profile.default_errno_ret {
        oci["defaultErrnoRet"] = json!(errno);
    }
    if !architectures.is_empty() {
        oci["architectures"] = json!(architectures);
    }
    if !profile.flags.is_empty() {
        oci["flags"] = json!(profile.flags);
    }
    if let Some(path) = profile.listener_path {
        oci["listenerPath"] = json!(path);
    }
    if let Some(metadata) = profile.listener_metadata {
        oci["listenerMetadata"] = json!(metadata);
    }
    serde_json::from_value(oci)
        .map_err(|e| SpecError::Invalid { field: field.into(), reason: format!("the profile: {e}") })
}

fn words(list: &str) -> Vec<String> {
    list.split_whitespace().map(String::from).collect()
}

/// crisp's default profile for a container with the bounding set `bounding`.
pub fn runtime_default(bounding: &Capabilities) -> Result<LinuxSeccomp, SpecError> {
    let (arch, native) = host_arch();
    let allow = |names: Vec<String>| Rule {
        name: None,
        names,
        action: "SCMP_ACT_ALLOW".into(),
        errno_ret: None,
        args: vec![],
        includes: Filter::default(),
        excludes: Filter::default(),
    };
    let mut rules = vec![allow(words(ALLOWED))];
    if !arch_calls(arch).is_empty() {
        rules.push(allow(words(arch_calls(arch))));
    }
    // The personas a program may switch to: Linux, its 32-bit flavour and a query of the current one.
    for persona in [0x0u64, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff] {
        let mut rule = allow(vec!["personality".into()]);
        rule.args = vec![json!({ "index": 0, "value": persona, "op": "SCMP_CMP_EQ" })];
        rules.push(rule);
    }
    for (cap, calls) in BY_CAPABILITY {
        if has(bounding, cap) {
            rules.push(allow(words(calls)));
        }
    }
    if !has(bounding, "CAP_SYS_ADMIN") {
        // `clone` without namespace flags (the flags are the second argument on s390x).
        let flags_index = if arch == "s390x" { 1 } else { 0 };
        let mut clone = allow(vec!["clone".into()]);
        clone.args = vec![
            json!({ "index": flags_index, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }),
        ];
        rules.push(clone);
        // `clone3` takes its flags in memory, out of seccomp's sight: refuse it so libc uses `clone`.
        let mut clone3 = allow(vec!["clone3".into()]);
        clone3.action = "SCMP_ACT_ERRNO".into();
        clone3.errno_ret = Some(ENOSYS);
        rules.push(clone3);
    }
    let profile = Profile {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno_ret: Some(EPERM),
        architectures: native.iter().map(|a| a.to_string()).collect(),
        arch_map: vec![],
        flags: vec![],
        listener_path: None,
        listener_metadata: None,
        syscalls: rules,
    };
    to_oci(profile, bounding, "seccomp")
}

/// What the request asks for.
enum Wanted {
    None,
    Default,
    Localhost(String),
}

// The deprecated `seccomp_profile_path` is still what older kubelets send.
#[allow(deprecated)]
fn wanted(sc: Option<&LinuxContainerSecurityContext>) -> Wanted {
    let Some(sc) = sc else { return Wanted::None };
    match &sc.seccomp {
        Some(SecurityProfile { profile_type, localhost_ref }) => match ProfileType::try_from(*profile_type) {
            Ok(ProfileType::RuntimeDefault) => Wanted::Default,
            Ok(ProfileType::Localhost) => Wanted::Localhost(localhost_ref.clone()),
            _ => Wanted::None,
        },
        None => match sc.seccomp_profile_path.as_str() {
            "runtime/default" | "docker/default" => Wanted::Default,
            path => match path.strip_prefix("localhost/") {
                Some(file) => Wanted::Localhost(file.to_string()),
                None => Wanted::None,
            },
        },
    }
}

/// The seccomp filter for the container, with `bounding` its bounding capability set.
pub fn build(
    sc: Option<&LinuxContainerSecurityContext>,
    privileged: bool,
    bounding: &Capabilities,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if privileged {
        return Ok(None);
    }
    match wanted(sc) {
        Wanted::None => Ok(None),
        Wanted::Default => runtime_default(bounding).map(Some),
        Wanted::Localhost(path) => {
            let field = "linux.security_context.seccomp.localhost_ref";
            let invalid = |reason: String| SpecError::Invalid { field: field.into(), reason };
            if !path.starts_with('/') {
                return Err(invalid(format!("{path:?} is not an absolute path")));
            }
            let text = std::fs::read(&path).map_err(|e| invalid(format!("reading the profile {path}: {e}")))?;
            let profile: Profile =
                serde_json::from_slice(&text).map_err(|e| invalid(format!("the profile {path}: {e}")))?;
            to_oci(profile, bounding, field).map(Some)
        }
    }
}
