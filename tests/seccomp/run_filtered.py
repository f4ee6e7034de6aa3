#!/usr/bin/python3
"""Runs a command under a seccomp filter, as systemd, Docker or a hostile host would apply it.

    run_filtered.py deny SYSCALL[,SYSCALL...] -- CMD...
        Everything allowed but the named syscalls, which fail with EPERM (what Docker's and
        containerd's default profiles do to io_uring_setup).
    run_filtered.py systemd FILTER... -- CMD...
        The allow list a unit's SystemCallFilter= lines build, e.g. `@system-service
        ~@privileged`: groups resolved with `systemd-analyze syscall-filter` at run time, later
        `~` entries removing from the list; everything else fails with EPERM
        (SystemCallErrorNumber=EPERM).
    run_filtered.py docker PROFILE.json -- CMD...
        A Docker/OCI seccomp profile (deploy/seccomp.json), read as runc reads it for a
        container with Docker's default capabilities on this machine's architecture and kernel.

Uses libseccomp's Python binding (Debian's python3-seccomp, which .ci/run installs). Syscall
names this libseccomp does not know are skipped, as systemd and runc skip them. Prints what it
built to stderr only with PERCORE_SECCOMP_VERBOSE=1, so the command's stderr stays its own.
"""

import errno
import json
import os
import platform
import subprocess
import sys

import seccomp

# Docker's default capability set for a container (moby's oci/caps/defaults.go).
DOCKER_DEFAULT_CAPS = {
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}
# Docker's names for this machine's architecture (Go's GOARCH).
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "riscv64": "riscv64", "s390x": "s390x",
          "ppc64le": "ppc64le"}
OPS = {
    "SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_LT": seccomp.LT, "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_GE": seccomp.GE, "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def log(msg):
    if os.environ.get("PERCORE_SECCOMP_VERBOSE") == "1":
        print(f"run_filtered: {msg}", file=sys.stderr)


def add(filt, action, name, *args):
    """Adds a rule; False where libseccomp does not know the syscall on this architecture."""
    try:
        filt.add_rule(action, name, *args)
        return True
    except (RuntimeError, ValueError, OSError) as e:
        log(f"skipped {name}: {e}")
        return False


def deny(names):
    filt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in names.split(","):
        if not add(filt, seccomp.ERRNO(errno.EPERM), name):
            sys.exit(f"run_filtered: unknown syscall {name}")
    return filt


def systemd_groups():
    """Every group `systemd-analyze syscall-filter` lists, name -> its entries."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], check=True,
                         capture_output=True, text=True).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            current = groups.setdefault(line.strip(), [])
        elif current is not None:
            current.append(line.strip())
    return groups


def expand(entry, groups, seen=()):
    if not entry.startswith("@"):
        return {entry}
    if entry not in groups:
        sys.exit(f"run_filtered: systemd knows no group {entry}")
    names = set()
    for member in groups[entry]:
        if member not in seen:
            names |= expand(member, groups, seen + (entry,))
    return names


def systemd(entries):
    groups = systemd_groups()
    allowed = set()
    for entry in entries:
        if entry.startswith("~"):
            allowed -= expand(entry[1:], groups)
        else:
            allowed |= expand(entry, groups)
    filt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    added = sum(add(filt, seccomp.ALLOW, name) for name in sorted(allowed))
    log(f"systemd {' '.join(entries)}: {added} of {len(allowed)} syscalls known here")
    return filt


def kernel_at_least(version):
    have = [int(x) for x in platform.release().split("-")[0].split(".")[:2]]
    want = [int(x) for x in version.split(".")[:2]]
    return have >= want


def applies(rule, arch):
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("caps") and not set(inc["caps"]) <= DOCKER_DEFAULT_CAPS:
        return False
    if inc.get("minKernel") and not kernel_at_least(inc["minKernel"]):
        return False
    if exc.get("arches") and arch in exc["arches"]:
        return False
    if exc.get("caps") and set(exc["caps"]) & DOCKER_DEFAULT_CAPS:
        return False
    return True


def docker(path):
    with open(path) as f:
        profile = json.load(f)
    arch = GOARCH.get(platform.machine(), platform.machine())
    default_errno = profile.get("defaultErrnoRet", errno.EPERM)
    if profile["defaultAction"] != "SCMP_ACT_ERRNO":
        sys.exit(f"run_filtered: defaultAction {profile['defaultAction']} not handled")
    filt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(default_errno))
    for rule in profile["syscalls"]:
        if not applies(rule, arch):
            continue
        if rule["action"] == "SCMP_ACT_ALLOW":
            action = seccomp.ALLOW
        elif rule["action"] == "SCMP_ACT_ERRNO":
            action = seccomp.ERRNO(rule.get("errnoRet", default_errno))
        else:
            sys.exit(f"run_filtered: action {rule['action']} not handled")
        args = []
        for a in rule.get("args") or []:
            if a["op"] == "SCMP_CMP_MASKED_EQ":
                args.append(seccomp.Arg(a["index"], seccomp.MASKED_EQ, a["value"],
                                        a.get("valueTwo", 0)))
            else:
                args.append(seccomp.Arg(a["index"], OPS[a["op"]], a["value"]))
        for name in rule["names"]:
            add(filt, action, name, *args)
    return filt


def main(argv):
    if "--" not in argv or len(argv) < 4:
        sys.exit(__doc__)
    split = argv.index("--")
    mode, params, cmd = argv[1], argv[2:split], argv[split + 1:]
    if mode == "deny":
        filt = deny(params[0])
    elif mode == "systemd":
        filt = systemd(params)
    elif mode == "docker":
        filt = docker(params[0])
    else:
        sys.exit(__doc__)
    filt.load()
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv)
