"""Hypervisor stacks: a QEMU build and a libvirt build, with a name, exact versions and a source.

A stack is data (lab.runtime.state.StackRecord): `system` (the installed packages), a distro
archive suite (apt-get download + dpkg -x into a tree, with a private apt index), a QEMU source
build, or a path to an existing tree. Fetched trees are cached by exact version under
/var/cache/kvm-acceptance-lab/stacks/ and appear there whole or not at all (unpacked in a
partial directory, renamed when complete). `resolve.ensure_stack` turns lab.yaml's stack into a
record; `tree.mount_lines` is how a host's mount namespace runs it (an overlay over /usr).
"""
