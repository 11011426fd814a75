"""Hot patches for QEMU with libcareplus: build, load, verify, take back out, diagnose.

One module per job, lower ones first:

- progress: the progress callback long steps take, and the suite's printer
- kpatch: a kpatch file's header (patch id, target buildID), read directly
- ctl_output: libcare-ctl / libcare-dump output text -> results
- diagnosis: why a build or apply failed: a one-line verdict + evidence (`HotpatchFailed`)
- cc_guard: the machine's `cc`, put back whatever libcare-patch-make does to it
- source_tree: the QEMU source tree, kept pristine across kpatch builds
- process_site: where a patched process lives: this machine or a lab host over SSH
- libcareplus: finding the tools; the driver (build, dump/header, apply, info, unapply)
- virsh: openEuler's `virsh hotpatch`
- qemu_source: the installed QEMU's source package (apt deb-src, apt-get source)
- qemu_build: the QEMU build guests run on, cached
- kpatch_cache: kpatches per patch set, cached beside the build
- target: the binary guests run on and how its kpatches are made
- doctor/: the hot patch doctor, every FAQ failure kind found before a patch is built or loaded
"""
