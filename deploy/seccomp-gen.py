#!/usr/bin/env python3
"""Writes deploy/seccomp.json: Moby's (Docker's) default seccomp profile plus the three io_uring
syscalls percore needs, and nothing else changed.

    deploy/seccomp-gen.py MOBY_DEFAULT_JSON > deploy/seccomp.json
    deploy/seccomp-gen.py --fetch > deploy/seccomp.json

--fetch takes Moby's profiles/seccomp/default.json from Debian's golang-github-docker-docker-dev
package (apt-get download, unpacked in a temporary folder, nothing installed), which is how
.ci/run checks that the committed file is what this script makes.

io_uring_setup, io_uring_enter and io_uring_register go into the profile's one unconditional
SCMP_ACT_ALLOW rule. Moby's profile allowed them until Docker 25 removed them from the default;
where the base still has them (as Debian 12's Docker 20.10 profile does) the output equals the
input. The script refuses a base where they are denied or conditional, rather than guess.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile

IO_URING = ["io_uring_setup", "io_uring_enter", "io_uring_register"]
DEBIAN_PACKAGE = "golang-github-docker-docker-dev"
PROFILE_IN_PACKAGE = "usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json"


def fetch():
    tmp = tempfile.mkdtemp(prefix="percore-seccomp-")
    download = ["apt-get", "download", "-qq", DEBIAN_PACKAGE]
    if subprocess.run(download, cwd=tmp, stdout=subprocess.DEVNULL).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(download, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    deb = glob.glob(os.path.join(tmp, f"{DEBIAN_PACKAGE}_*.deb"))[0]
    subprocess.run(["dpkg-deb", "-x", deb, os.path.join(tmp, "root")], check=True)
    with open(os.path.join(tmp, "root", PROFILE_IN_PACKAGE)) as f:
        text = f.read()
    subprocess.run(["rm", "-rf", tmp], check=True)
    return json.loads(text)


def unconditional_allow(rule):
    return (rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
            and not rule.get("includes") and not rule.get("excludes"))


def allowed_everywhere(profile):
    return {n for r in profile["syscalls"] if unconditional_allow(r) for n in r["names"]}


def sort_key(name):
    # Moby sorts its list with underscores ignored (ioctl before io_destroy, _llseek after llistxattr).
    return name.replace("_", "")


def add_io_uring(profile):
    for rule in profile["syscalls"]:
        if not unconditional_allow(rule):
            clash = set(rule["names"]) & set(IO_URING)
            if clash:
                sys.exit(f"seccomp-gen: the base has a conditional or deny rule for {clash}")
    target = next(r for r in profile["syscalls"] if unconditional_allow(r))
    for name in IO_URING:
        if name in target["names"]:
            continue
        keys = [sort_key(n) for n in target["names"]]
        at = next((i for i, k in enumerate(keys) if k > sort_key(name)), len(keys))
        target["names"].insert(at, name)
    return profile


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    if argv[1] == "--fetch":
        base = fetch()
    else:
        with open(argv[1]) as f:
            base = json.load(f)
    before = allowed_everywhere(base)
    rules_before = len(base["syscalls"])
    out = add_io_uring(json.loads(json.dumps(base)))
    added = allowed_everywhere(out) - before
    assert added <= set(IO_URING) and len(out["syscalls"]) == rules_before
    assert set(IO_URING) <= allowed_everywhere(out)
    print(f"seccomp-gen: added {sorted(added) or 'nothing (the base allows io_uring)'}",
          file=sys.stderr)
    json.dump(out, sys.stdout, indent="\t")
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv)
