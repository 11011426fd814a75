"""The libcareplus driver and the QEMU source build, tested without libcareplus, a lab or a network.

The libcareplus output texts below were captured from real runs on this kind
of machine (Debian 12, libcareplus built from openeuler-mirror/libcareplus,
QEMU 1:7.2+dfsg-7+deb12u18 built by lab/hotpatch/qemu_build.py, guests on the embedded
lab); addresses and buildIDs are the ones those runs printed.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab.errors import ConfigError, HotpatchError, MissingToolError
from lab.hotpatch.cc_guard import cc_guard
from lab.hotpatch.ctl_output import parse_apply, parse_dump_header, parse_info, parse_unapply
from lab.hotpatch.diagnosis import BuildIdMismatch, HotpatchFailed, diagnose_apply, diagnose_build, diagnose_buildid
from lab.hotpatch.kpatch import KPATCH_HEADER, read_kpatch_header
from lab.hotpatch.kpatch_cache import patch_set_hash
from lab.hotpatch.libcareplus import TOOLS, LibcarePlus, find_libcareplus, missing_reason
from lab.hotpatch.process_site import HostSite, load_base
from lab.hotpatch.qemu_source import deb_src_stanzas, has_deb_src
from lab.hotpatch.source_tree import patched_files, restore_lpmakeorig
from lab.util.elf import build_id, text_digest
from lab.util.process import run
from suites.hotpatch.conftest import load_hotpatch_thresholds

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "suites" / "hotpatch" / "patches"

# -- captured libcareplus output (real runs; see the module docstring) --------

LIB_BUILDID = "421abcbc77fc5afb05099f4de9bcc2ddcaa369ba"  # the lab build of that QEMU, through libcare-patch-make
DISTRO_BUILDID = "d9541fd67c4ea37f9ca7fca0f5096f32b3b7e7e0"  # Debian's qemu-system-x86 1:7.2+dfsg-7+deb12u18+b3

CAPTURED_APPLY_OK = """\
Applying patch for 22917 with /var/cache/kvm-acceptance-lab/qemu-hotpatch/qemu-1_7.2+dfsg-7+deb12u18-libcare-0bf56313/kpatches/0001-1b80706f63becdd7/421abcbc77fc5afb05099f4de9bcc2ddcaa369ba.kpatchkpatch_ctl targeting pid 22917
kpatch_ctl cmdline="...(elided)..."
Found 18 object file(s)qemu-system-x86_64: load offset: 558a2e787000 = 558a2e787000 - 0
Found 0 applied patch(es)1 object(s) have valid patch(es)
attached to 6 thread(s): 22917, 22921, 22922, 22923, 22924, 22925
allocated 0x4000 bytes at 0x558a2f6e1000 for 'qemu-system-x86_64' patch
Stacktrace to verify safety for pid 22917:
	[0x7f46d8ff1366] ppoll+0xa6
	[0x558a2ef1f9ee] qemu_poll_ns+0x6e
	[0x558a2ef1d1fe] main_loop_wait+0x15e
	[0x558a2ebdd877] qemu_main_loop+0x167
	[0x558a2edc3d66] qemu_default_main+0x6
	[0x7f46d8f1c24a] __libc_init_first+0x8a
	[0x7f46d8f1c305] __libc_start_main+0x85
	[0x558a2ea4cbb1] _start+0x21
Stacktrace to verify safety for pid 22921:
	[0x7f46d8ff6829] syscall+0x19
	[0x558a2ef0c1aa] qemu_event_wait+0x4a
	[0x558a2ef148b8] call_rcu_thread+0x78
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22922:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d8bc] pthread_cond_timedwait+0x21c
	[0x558a2ef0b1a1] qemu_cond_timedwait_ts+0x51
	[0x558a2ef0bd40] qemu_cond_timedwait_impl+0x90
	[0x558a2ef1ecd4] worker_thread+0x164
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22923:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d8bc] pthread_cond_timedwait+0x21c
	[0x558a2ef0b1a1] qemu_cond_timedwait_ts+0x51
	[0x558a2ef0bd40] qemu_cond_timedwait_impl+0x90
	[0x558a2ef1ecd4] worker_thread+0x164
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22924:
	[0x7f46d8ff126f] poll+0x4f
	[0x7f46d922d98e] g_main_context_dispatch+0x49e
	[0x7f46d922dccf] g_main_loop_run+0x6f
	[0x558a2edf3aa9] iothread_run+0x79
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22925:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d5d8] pthread_cond_wait+0x1e8
	[0x558a2ef0bb2b] qemu_cond_wait_impl+0x4b
	[0x558a2ebd760b] qemu_wait_io_event+0x3b
	[0x558a2edbe2de] mttcg_cpu_thread_fn+0xde
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
qemu-system-x86_64 origcode from 0x558a2ee80200+0x5 to 0x558a2f6e4100
qemu-system-x86_64 hunk 0x558a2ee80200+0x43 -> 0x558a2f6e24a0+0x43
r-xp: 0x558a2f6e1000 + 0x2000Finished ptrace detaching.PID '22917' process patch frozen_time is 38922 microsecond
1 patch hunk(s) have been successfully applied to PID '22917'
symbol 'qmp_query_version.kpatch' is defined and global, we don't check for overrition
symbol 'qmp_query_version' is defined and global, we don't check for overrition
"""
CAPTURED_INFO_TWO = """\
Pid:                      22917
Target:                   qemu-system-x86_64
Build id:                 421abcbc77fc5afb05099f4de9bcc2ddcaa369ba
Applied patch number:     2
Patch id:                 0001
Patch id:                 0002

"""
CAPTURED_UNAPPLY_OK = """\
Unpplying patch for 22917 with patch id '0001'kpatch_ctl targeting pid 22917
kpatch_ctl cmdline="...(elided)..."
attached to 6 thread(s): 22917, 22921, 22922, 22923, 22924, 22925
Found 19 object file(s)qemu-system-x86_64: load offset: 558a2e787000 = 558a2e787000 - 0
Found 1 applied patch(es)Stacktrace to verify safety for pid 22917:
	[0x7f46d8ff1366] ppoll+0xa6
	[0x558a2ef1f9ee] qemu_poll_ns+0x6e
	[0x558a2ef1d1fe] main_loop_wait+0x15e
	[0x558a2ebdd877] qemu_main_loop+0x167
	[0x558a2edc3d66] qemu_default_main+0x6
	[0x7f46d8f1c24a] __libc_init_first+0x8a
	[0x7f46d8f1c305] __libc_start_main+0x85
	[0x558a2ea4cbb1] _start+0x21
Stacktrace to verify safety for pid 22921:
	[0x7f46d8ff6829] syscall+0x19
	[0x558a2ef0c1aa] qemu_event_wait+0x4a
	[0x558a2ef148b8] call_rcu_thread+0x78
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22922:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d8bc] pthread_cond_timedwait+0x21c
	[0x558a2ef0b1a1] qemu_cond_timedwait_ts+0x51
	[0x558a2ef0bd40] qemu_cond_timedwait_impl+0x90
	[0x558a2ef1ecd4] worker_thread+0x164
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22923:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d8bc] pthread_cond_timedwait+0x21c
	[0x558a2ef0b1a1] qemu_cond_timedwait_ts+0x51
	[0x558a2ef0bd40] qemu_cond_timedwait_impl+0x90
	[0x558a2ef1ecd4] worker_thread+0x164
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22924:
	[0x7f46d8ff126f] poll+0x4f
	[0x7f46d922d98e] g_main_context_dispatch+0x49e
	[0x7f46d922dccf] g_main_loop_run+0x6f
	[0x558a2edf3aa9] iothread_run+0x79
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22925:
	[0x7f4685c91e03]
restore origin code from 0x558a2f6e4100 to 0x558a2ee80200
munmap kpatch memory from 0x558a2f6e1000
Finished ptrace detaching.PID '22917' process unpatch frozen_time is 20910 microsecond
1 patch hunk(s) were successfully cancelled from PID '22917'
"""
CAPTURED_APPLY_MISMATCH = """\
Applying patch for 23054 with /var/cache/kvm-acceptance-lab/qemu-hotpatch/qemu-1_7.2+dfsg-7+deb12u18-libcare-0bf56313/kpatches/0001-1b80706f63becdd7/421abcbc77fc5afb05099f4de9bcc2ddcaa369ba.kpatchkpatch_ctl targeting pid 23054
kpatch_ctl cmdline="...(elided)..."
Found 60 object file(s)qemu-system-x86_64: load offset: 55ba32ddf000 = 55ba32ddf000 - 0
Found 0 applied patch(es)can't get buildid for libudev.so.1.7.5
0 object(s) have valid patch(es)
Finished ptrace detaching.No patch(es) applicable to PID '23054' have been found
"""
CAPTURED_APPLY_UNSAFE = """\
Applying patch for 22917 with /var/cache/kvm-acceptance-lab/qemu-hotpatch/qemu-1_7.2+dfsg-7+deb12u18-libcare-0bf56313/kpatches/stack-09d9eb40451a517b/421abcbc77fc5afb05099f4de9bcc2ddcaa369ba.kpatchkpatch_ctl targeting pid 22917
kpatch_ctl cmdline="...(elided)..."
Found 18 object file(s)qemu-system-x86_64: load offset: 558a2e787000 = 558a2e787000 - 0
Found 0 applied patch(es)1 object(s) have valid patch(es)
attached to 6 thread(s): 22917, 22921, 22922, 22923, 22924, 22925
allocated 0x4000 bytes at 0x558a2f6e1000 for 'qemu-system-x86_64' patch
Stacktrace to verify safety for pid 22917:
	[0x7f46d8ff1366] ppoll+0xa6
	[0x558a2ef1f9ee] qemu_poll_ns+0x6e
	[0x558a2ef1d1fe] main_loop_wait+0x15e
	[0x558a2ebdd877] qemu_main_loop+0x167
	[0x558a2edc3d66] qemu_default_main+0x6
Stacktrace to verify safety for pid 22921:
	[0x7f46d8ff6829] syscall+0x19
	[0x558a2ef0c1aa] qemu_event_wait+0x4a
	[0x558a2ef148b8] call_rcu_thread+0x78
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22922:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d8bc] pthread_cond_timedwait+0x21c
	[0x558a2ef0b1a1] qemu_cond_timedwait_ts+0x51
	[0x558a2ef0bd40] qemu_cond_timedwait_impl+0x90
	[0x558a2ef1ecd4] worker_thread+0x164
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22923:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d8bc] pthread_cond_timedwait+0x21c
	[0x558a2ef0b1a1] qemu_cond_timedwait_ts+0x51
	[0x558a2ef0bd40] qemu_cond_timedwait_impl+0x90
	[0x558a2ef1ecd4] worker_thread+0x164
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22924:
	[0x7f46d8ff126f] poll+0x4f
	[0x7f46d922d98e] g_main_context_dispatch+0x49e
	[0x7f46d922dccf] g_main_loop_run+0x6f
	[0x558a2edf3aa9] iothread_run+0x79
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22925:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d5d8] pthread_cond_wait+0x1e8
	[0x558a2ef0bb2b] qemu_cond_wait_impl+0x4b
	[0x558a2ebd760b] qemu_wait_io_event+0x3b
	[0x558a2edbe2de] mttcg_cpu_thread_fn+0xde
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
attached to 6 thread(s): 22917, 22921, 22922, 22923, 22924, 22925
Stacktrace to verify safety for pid 22917:
	[0x7f46d8ff1366] ppoll+0xa6
	[0x558a2ef1f9ee] qemu_poll_ns+0x6e
	[0x558a2ef1d1fe] main_loop_wait+0x15e
	[0x558a2ebdd877] qemu_main_loop+0x167
	[0x558a2edc3d66] qemu_default_main+0x6
Stacktrace to verify safety for pid 22921:
	[0x7f46d8ff6829] syscall+0x19
	[0x558a2ef0c1aa] qemu_event_wait+0x4a
	[0x558a2ef148b8] call_rcu_thread+0x78
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22922:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d8bc] pthread_cond_timedwait+0x21c
	[0x558a2ef0b1a1] qemu_cond_timedwait_ts+0x51
	[0x558a2ef0bd40] qemu_cond_timedwait_impl+0x90
	[0x558a2ef1ecd4] worker_thread+0x164
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22923:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d8bc] pthread_cond_timedwait+0x21c
	[0x558a2ef0b1a1] qemu_cond_timedwait_ts+0x51
	[0x558a2ef0bd40] qemu_cond_timedwait_impl+0x90
	[0x558a2ef1ecd4] worker_thread+0x164
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22924:
	[0x7f46d8ff126f] poll+0x4f
	[0x7f46d922d98e] g_main_context_dispatch+0x49e
	[0x7f46d922dccf] g_main_loop_run+0x6f
	[0x558a2edf3aa9] iothread_run+0x79
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22925:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d5d8] pthread_cond_wait+0x1e8
	[0x558a2ef0bb2b] qemu_cond_wait_impl+0x4b
	[0x558a2ebd760b] qemu_wait_io_event+0x3b
	[0x558a2edbe2de] mttcg_cpu_thread_fn+0xde
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22917:
	[0x7f46d8ff1366] ppoll+0xa6
	[0x558a2ef1f9ee] qemu_poll_ns+0x6e
	[0x558a2ef1d1fe] main_loop_wait+0x15e
	[0x558a2ebdd877] qemu_main_loop+0x167
	[0x558a2edc3d66] qemu_default_main+0x6
	[0x7f46d8f1c24a] __libc_init_first+0x8a
	[0x7f46d8f1c305] __libc_start_main+0x85
	[0x558a2ea4cbb1] _start+0x21
Stacktrace to verify safety for pid 22921:
	[0x7f46d8ff6829] syscall+0x19
	[0x558a2ef0c1aa] qemu_event_wait+0x4a
	[0x558a2ef148b8] call_rcu_thread+0x78
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22922:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d8bc] pthread_cond_timedwait+0x21c
	[0x558a2ef0b1a1] qemu_cond_timedwait_ts+0x51
	[0x558a2ef0bd40] qemu_cond_timedwait_impl+0x90
	[0x558a2ef1ecd4] worker_thread+0x164
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22923:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d8bc] pthread_cond_timedwait+0x21c
	[0x558a2ef0b1a1] qemu_cond_timedwait_ts+0x51
	[0x558a2ef0bd40] qemu_cond_timedwait_impl+0x90
	[0x558a2ef1ecd4] worker_thread+0x164
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22924:
	[0x7f46d8ff126f] poll+0x4f
	[0x7f46d922d98e] g_main_context_dispatch+0x49e
	[0x7f46d922dccf] g_main_loop_run+0x6f
	[0x558a2edf3aa9] iothread_run+0x79
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
Stacktrace to verify safety for pid 22925:
	[0x7f46d8f7af16] __nptl_death_event+0xd6
	[0x7f46d8f7d5d8] pthread_cond_wait+0x1e8
	[0x558a2ef0bb2b] qemu_cond_wait_impl+0x4b
	[0x558a2ebd760b] qemu_wait_io_event+0x3b
	[0x558a2edbe2de] mttcg_cpu_thread_fn+0xde
	[0x558a2ef0b018] qemu_thread_start+0x88
	[0x7f46d8f7e1f5] pthread_condattr_setpshared+0x515
	[0x7f46d8ffe8ec] __xmknodat+0x23c
munmap kpatch memory from 0x558a2f6e1000
Finished ptrace detaching.PID '22917' process patch frozen_time is 3061917 microsecond
Failed to apply patch '/var/cache/kvm-acceptance-lab/qemu-hotpatch/qemu-1_7.2+dfsg-7+deb12u18-libcare-0bf56313/kpatches/stack-09d9eb40451a517b/421abcbc77fc5afb05099f4de9bcc2ddcaa369ba.kpatch'
symbol 'runstate_set' is defined and global, we don't check for overrition
symbol 'pause_all_vcpus' is defined and global, we don't check for overrition
symbol 'shutdown_action' is defined and global, we don't check for overrition
symbol 'qemu_get_pid_name' is defined and global, we don't check for overrition
symbol 'qtest_driver' is defined and global, we don't check for overrition
symbol 'replay_checkpoint' is defined and global, we don't check for overrition
symbol 'qapi_event_send_powerdown' is defined and global, we don't check for overrition
symbol 'resume_all_vcpus' is defined and global, we don't check for overrition
symbol 'qapi_event_send_shutdown' is defined and global, we don't check for overrition
symbol 'notifier_list_notify' is defined and global, we don't check for overrition
symbol 'vm_stop' is defined and global, we don't check for overrition
symbol 'panic_action' is defined and global, we don't check for overrition
symbol 'object_get_class' is defined and global, we don't check for overrition
symbol 'qemu_main_loop' is defined and global, we don't check for overrition
symbol 'qemu_vmstop_requested' is defined and global, we don't check for overrition
symbol 'qemu_system_reset' is defined and global, we don't check for overrition
symbol 'qemu_main_loop.kpatch' is defined and global, we don't check for overrition
symbol 'qapi_event_send_suspend' is defined and global, we don't check for overrition
symbol 'main_loop_wait' is defined and global, we don't check for overrition
symbol 'object_class_dynamic_cast_assert' is defined and global, we don't check for overrition
symbol 'qapi_event_send_wakeup' is defined and global, we don't check for overrition
symbol 'qemu_get_thread_id' is defined and global, we don't check for overrition
symbol 'current_machine' is defined and global, we don't check for overrition
symbol 'error_report' is defined and global, we don't check for overrition
kpatch_patch.c(233): safety check failed for 558a2ebdd710, will continue until 558a2edc3d66
kpatch_patch.c(237): safety check failed for 558a2ebdd710
kpatch_patch.c(486): Patching qemu-system-x86_64 failed, unapplying partially applied patch
kpatch_patch.c(586): Failed to apply patch '/var/cache/kvm-acceptance-lab/qemu-hotpatch/qemu-1_7.2+dfsg-7+deb12u18-libcare-0bf56313/kpatches/stack-09d9eb40451a517b/421abcbc77fc5afb05099f4de9bcc2ddcaa369ba.kpatch'
"""
CAPTURED_BUILD_TOO_SMALL = """\
applying /work/main/suites/hotpatch/patches/tiny-object_property_allow_set_link.patch...
patching file qom/object.c
replace QEMU_LDFLAGS to 'QEMU_LDFLAGS= -fstack-protector-strong -Wl,-q'
BUILDING PATCHED CODE
INSTALLING PATCHED OBJECTS INTO /var/cache/kvm-acceptance-lab/qemu-hotpatch/qemu-1_7.2+dfsg-7+deb12u18-libcare-0bf56313/src/build/.lpmaketmp/patched
install -D -m 0755 qemu-system-x86_64 /var/cache/kvm-acceptance-lab/qemu-hotpatch/qemu-1_7.2+dfsg-7+deb12u18-libcare-0bf56313/src/build/.lpmaketmp/patched/usr/bin/qemu-system-x86_64
recover QEMU_LDFLAGS to 'QEMU_LDFLAGS= -fstack-protector-strong'
MAKING PATCHES
kpatch_strip.c(95): too small function to patch at 0x647f50
kpatch_strip.c(122): Functions is too small to patchkpatch_strip.c(218): Failed to process kpatch infoFailed to do stripped.
"""  # `nm -S` of that build: 0000000000647f50 0000000000000001 T object_property_allow_set_link
CAPTURED_DUMP = """\
Patch Name:               /var/cache/kvm-acceptance-lab/qemu-hotpatch/qemu-1_7.2+dfsg-7+deb12u18-libcare-0bf56313/kpatches/0001-1b80706f63becdd7/421abcbc77fc5afb05099f4de9bcc2ddcaa369ba.kpatch
Magic:                    KPATCH1
Patch id:                 0001
buildid:                  421abcbc77fc5afb05099f4de9bcc2ddcaa369ba
"""


# -- finding libcareplus ------------------------------------------------------

def _fake_tools(bindir: Path, names=TOOLS) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    for name in names:
        tool = bindir / name
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(0o755)


def test_absent_libcareplus_gives_the_one_line_skip_reason(tmp_path):
    with pytest.raises(MissingToolError) as caught:
        find_libcareplus(path=str(tmp_path))
    message = str(caught.value)
    assert message.startswith("libcareplus not found on PATH or hotpatch.libcareplus_prefix: install it")
    assert "dnf install libcareplus" in message and "\n" not in message
    assert missing_reason(path=str(tmp_path)) == message


def test_prefix_from_lab_yaml_is_searched_and_named(tmp_path):
    with pytest.raises(MissingToolError, match=r"not found on hotpatch.libcareplus_prefix /nonexistent"):
        find_libcareplus(prefix="/nonexistent")
    _fake_tools(tmp_path / "bin")
    found = find_libcareplus(prefix=str(tmp_path), path="")
    assert found.bindir == tmp_path / "bin"
    assert found.tool("libcare-ctl") == str(tmp_path / "bin" / "libcare-ctl")


def test_a_partial_install_names_the_missing_tools(tmp_path):
    _fake_tools(tmp_path, [t for t in TOOLS if t != "kpatch_strip"])
    with pytest.raises(MissingToolError, match=r"incomplete on PATH: missing kpatch_strip"):
        find_libcareplus(path=str(tmp_path))


# -- ELF and kpatch headers ---------------------------------------------------

def test_elf_build_id_matches_readelf_on_a_real_binary():
    binary = "/usr/bin/qemu-system-x86_64" if os.path.exists("/usr/bin/qemu-system-x86_64") else sys.executable
    binary = os.path.realpath(binary)
    out = run(["readelf", "-n", binary], check=False).stdout
    expected = next(line.split()[-1] for line in out.splitlines() if "Build ID:" in line)
    assert build_id(binary, error=HotpatchError) == expected
    assert len(text_digest(binary, error=HotpatchError)) == 64


def test_elf_build_id_refuses_a_non_elf_file(tmp_path):
    path = tmp_path / "x"
    path.write_text("#!/bin/sh\n")
    with pytest.raises(HotpatchError, match="not an ELF file"):
        build_id(path, error=HotpatchError)


def _kpatch_bytes(patch_id: str, buildid: str) -> bytes:
    head = KPATCH_HEADER.pack(b"KPATCH1", patch_id.encode(), 0, 0, b"", b"", buildid.encode(), b"",
                                      1700000000, 0)
    return head + b"\0" * 256


def test_kpatch_header_is_read_directly_and_from_libcare_dump_alike(tmp_path):
    path = tmp_path / f"{LIB_BUILDID}.kpatch"
    path.write_bytes(_kpatch_bytes("0001", LIB_BUILDID))
    direct = read_kpatch_header(path)
    dumped = parse_dump_header(CAPTURED_DUMP, str(path))
    assert (direct.patch_id, direct.buildid) == ("0001", LIB_BUILDID)
    assert (dumped.patch_id, dumped.buildid) == ("0001", LIB_BUILDID)
    bad = tmp_path / "bad.kpatch"
    bad.write_bytes(b"ELF" + b"\0" * 400)
    with pytest.raises(HotpatchError, match="not a kpatch file"):
        read_kpatch_header(bad)
    with pytest.raises(HotpatchError, match="libcare-dump could not read"):
        parse_dump_header("Invalid kpatch file 'x'\n", "x")


# -- libcare-ctl output -------------------------------------------------------

def test_apply_output_gives_hunks_and_frozen_time():
    hunks, frozen = parse_apply(CAPTURED_APPLY_OK)
    assert hunks == 1 and frozen is not None and frozen > 0
    assert parse_apply(CAPTURED_APPLY_MISMATCH) == (None, None)


def test_info_output_lists_patch_ids_in_order():
    (entry,) = parse_info(CAPTURED_INFO_TWO)
    assert entry.buildid == LIB_BUILDID and entry.patch_ids == ("0001", "0002") and entry.count == 2
    assert entry.target.endswith("qemu-system-x86_64")
    assert parse_info("") == []


def test_unapply_output_gives_hunks_and_frozen_time():
    hunks, frozen = parse_unapply(CAPTURED_UNAPPLY_OK)
    assert hunks == 1 and frozen is not None
    assert parse_unapply("No patch(es) cancellable from PID '1' were found\n") == (None, None)


# -- diagnosis: one-line verdict + evidence -----------------------------------

def test_buildid_mismatch_verdict_names_both_ids_and_the_faq_remedy():
    found = diagnose_buildid(LIB_BUILDID, DISTRO_BUILDID, CAPTURED_APPLY_MISMATCH, "/c/x.kpatch", "/usr/bin/qemu")
    assert isinstance(found, BuildIdMismatch)
    assert found.kind == "buildid-mismatch" and "\n" not in found.verdict
    assert LIB_BUILDID in found.verdict and DISTRO_BUILDID in found.verdict
    assert "remedy: rebuild the patch against this exact QEMU binary" in found.verdict
    assert any("No patch(es) applicable" in e for e in found.evidence)
    assert diagnose_buildid(LIB_BUILDID, LIB_BUILDID) is None


def test_exit_status_zero_with_no_patch_applied_is_still_a_failure():
    # libcare-ctl exits 0 here; only the text says nothing was applied.
    found = diagnose_apply(CAPTURED_APPLY_MISMATCH)
    assert found.kind == "buildid-mismatch"


def test_safety_check_failure_is_diagnosed_as_a_function_on_a_threads_stack():
    # 0x558a2ebdd710 is qemu_main_loop in that process (load base 0x558a2e787000 + 0x456710)
    found = diagnose_apply(CAPTURED_APPLY_UNSAFE, symbolize={0x558a2ebdd710: "qemu_main_loop"}.get)
    assert found.kind == "unsafe-on-stack" and "\n" not in found.verdict
    assert "qemu_main_loop is always on a thread's stack" in found.verdict and "remedy:" in found.verdict
    assert "[0x558a2ebdd877] qemu_main_loop+0x167" in found.evidence  # the stack trace line that shows it
    assert any("safety check failed" in e for e in found.evidence)
    unnamed = diagnose_apply(CAPTURED_APPLY_UNSAFE)
    assert unnamed.kind == "unsafe-on-stack" and "0x" in unnamed.verdict


def test_function_shorter_than_5_bytes_is_diagnosed_from_the_build_log():
    names = {0x647f50: "object_property_allow_set_link"}
    found = diagnose_build(CAPTURED_BUILD_TOO_SMALL, symbolize=names.get, size_of=lambda name: 1)
    assert found.kind == "function-too-small" and "\n" not in found.verdict
    assert "object_property_allow_set_link is 1 byte long, shorter than the 5-byte jump" in found.verdict
    assert "kpatch_strip.c(95): too small function to patch at 0x647f50" in found.evidence
    assert "Failed to do stripped." in found.evidence  # joined messages are split into lines of evidence


def test_other_build_outcomes_are_told_apart():
    rejected = "applying /p/0001.patch...\npatching file monitor/x.c\nHunk #1 FAILED at 101.\n" \
               "1 out of 1 hunk FAILED -- saving rejects to file monitor/x.c.rej\n"
    assert "does not apply" in diagnose_build(rejected).verdict
    nothing = "BUILDING ORIGINAL CODE\nINSTALLING ORIGINAL OBJECTS INTO /b/lpmake\napplying /p/a.patch...\n" \
              "BUILDING PATCHED CODE\nINSTALLING PATCHED OBJECTS INTO /b/.lpmaketmp/patched\nMAKING PATCHES\n"
    assert diagnose_build(nothing).kind == "no-change"
    broken = "../monitor/qmp-cmds-control.c:104:5: error: expected ';' before 'return'\n"
    assert "the build failed" in diagnose_build(broken).verdict
    # kpatch_gensrc refusing a unit fails its compile step: libcare's own words are the verdict
    refused = "[17/678] Compiling C object libqemuutil.a.p/util_rcu.c.o\nFAILED: libqemuutil.a.p/util_rcu.c.o \n" \
              "FATAL! Variables co_tls_rcu_reader (line 929) and co_tls_rcu_reader (line 929) don't match\n"
    assert diagnose_build(refused).verdict == (
        "libcare-patch-make refused the change: FATAL! Variables co_tls_rcu_reader (line 929) and "
        "co_tls_rcu_reader (line 929) don't match")


# -- protecting the host's cc -------------------------------------------------

def _cc_chain(tmp_path: Path) -> tuple[Path, Path]:
    """tmp/usr/bin/cc -> tmp/etc/alternatives/cc -> /usr/bin/gcc, like Debian's."""
    usr_cc, alt_cc = tmp_path / "usr" / "bin" / "cc", tmp_path / "etc" / "alternatives" / "cc"
    usr_cc.parent.mkdir(parents=True)
    alt_cc.parent.mkdir(parents=True)
    alt_cc.symlink_to("/usr/bin/gcc")
    usr_cc.symlink_to(alt_cc)
    return usr_cc, alt_cc


def _swap_like_libcare_patch_make(link: Path, to: str) -> None:
    # what libcare-patch-make's replace_cc_symbolink does: unlink, then ln -s libcare-cc
    run(["bash", "-c", f'unlink "{link}"; ln -s "{to}" "{link}"'])


def test_cc_guard_restores_the_link_after_a_normal_run(tmp_path):
    usr_cc, alt_cc = _cc_chain(tmp_path)
    with cc_guard([usr_cc, alt_cc]):
        _swap_like_libcare_patch_make(usr_cc, "/opt/libcare/bin/libcare-cc")
        assert os.readlink(usr_cc) == "/opt/libcare/bin/libcare-cc"
    assert os.readlink(usr_cc) == str(alt_cc) and os.readlink(alt_cc) == "/usr/bin/gcc"


def test_cc_guard_restores_the_link_on_keyboard_interrupt(tmp_path):
    usr_cc, alt_cc = _cc_chain(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with cc_guard([usr_cc, alt_cc]):
            _swap_like_libcare_patch_make(usr_cc, "/opt/libcare/bin/libcare-cc")
            # libcare-patch-make's own SIGINT trap "recovers" to the resolved compiler, not the original link
            _swap_like_libcare_patch_make(alt_cc, "/opt/elsewhere/gcc")
            raise KeyboardInterrupt
    assert os.readlink(usr_cc) == str(alt_cc) and os.readlink(alt_cc) == "/usr/bin/gcc"


def test_cc_guard_restores_the_link_when_the_process_gets_sigterm(tmp_path):
    usr_cc, alt_cc = _cc_chain(tmp_path)
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from lab.hotpatch.cc_guard import cc_guard
        from lab.util.process import run
        with cc_guard([{str(usr_cc)!r}, {str(alt_cc)!r}]):
            run(["bash", "-c", 'unlink "{usr_cc}"; ln -s /opt/libcare/bin/libcare-cc "{usr_cc}"'], check=False)
            print("swapped", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "swapped"
    assert os.readlink(usr_cc) == "/opt/libcare/bin/libcare-cc"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert proc.returncode != 0
    assert os.readlink(usr_cc) == str(alt_cc)


def test_cc_guard_puts_back_a_regular_file_and_removes_what_was_not_there(tmp_path):
    real, absent = tmp_path / "cc", tmp_path / "c89"
    real.write_bytes(b"\x7fELF-fake-compiler")
    with cc_guard([real, absent]):
        real.unlink()
        real.symlink_to("/opt/libcare/bin/libcare-cc")
        absent.symlink_to("/opt/libcare/bin/libcare-cc")
    assert not real.is_symlink() and real.read_bytes() == b"\x7fELF-fake-compiler"
    assert not absent.exists() and not absent.is_symlink()
    assert not list(tmp_path.glob(".*backup"))


FAKE_PATCH_MAKE = """#!/bin/sh
# A stand-in for libcare-patch-make (not libcareplus code): swaps the injected cc link as the
# real one does, prints the lines the real one prints on a too-small function, exits 0 with no kpatch.
ln -sf "$KVMLAB_FAKE_LIBCARE_CC" "$KVMLAB_FAKE_CC"
echo "BUILDING ORIGINAL CODE"
echo "applying $7..."
echo "BUILDING PATCHED CODE"
echo "MAKING PATCHES"
echo "kpatch_strip.c(95): too small function to patch at 0x4a4690" >&2
echo "Failed to do stripped."
printf '%s\\n' "$@" > "$KVMLAB_FAKE_ARGS"
printf '%s' "$TERM" > "$KVMLAB_FAKE_TERM"
exit 0
"""


def test_build_judges_by_output_files_restores_cc_and_passes_absolute_patch_paths(tmp_path, monkeypatch):
    bindir = tmp_path / "libcare"
    _fake_tools(bindir)
    (bindir / "libcare-patch-make").write_text(FAKE_PATCH_MAKE)
    usr_cc, alt_cc = _cc_chain(tmp_path)
    src = tmp_path / "qemu"
    (src / "build").mkdir(parents=True)
    patch = tmp_path / "p" / "0001.patch"
    patch.parent.mkdir()
    patch.write_text("--- a/x.c\n+++ b/x.c\n")
    (src / "x.c").write_text("int x;\n")
    monkeypatch.setenv("KVMLAB_FAKE_CC", str(usr_cc))
    monkeypatch.setenv("KVMLAB_FAKE_LIBCARE_CC", str(bindir / "libcare-cc"))
    monkeypatch.setenv("KVMLAB_FAKE_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("KVMLAB_FAKE_TERM", str(tmp_path / "term"))
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.chdir(tmp_path / "p")
    driver = LibcarePlus(bindir, cc_links=(usr_cc, alt_cc), cc_lock=tmp_path / "cc.lock")
    with pytest.raises(HotpatchFailed) as caught:
        driver.build(src, ["0001.patch"], src / "build", patch_id="0001", jobs=1)
    assert caught.value.diagnosis.kind == "function-too-small"
    assert os.readlink(usr_cc) == str(alt_cc), "cc was left pointing at libcare-cc"
    args = (tmp_path / "args").read_text().split()
    assert str(patch) in args and "0001.patch" not in args, args
    assert args[:6] == ["-s", "..", "-i", "0001", "-j", "1"]
    assert (tmp_path / "term").read_text() == "dumb"
    with pytest.raises(HotpatchError, match="patch id"):
        driver.build(src, [patch], src / "build", patch_id="too-long-id")


class _HostHere:
    """A lab host whose shell is this machine's (as the embedded lab's hosts share its filesystem and PIDs)."""
    name, ssh_target = "here", "root@127.0.0.1"

    def __init__(self):
        self.commands: list[str] = []

    def run(self, command: str, *, check: bool = True, timeout: float = 60):
        self.commands.append(command)
        return run(["bash", "-c", command], check=check, timeout=timeout)

    def ssh_options(self) -> list[str]:
        return []

    def shell_quote(self, *args: str) -> str:
        return " ".join(shlex.quote(a) for a in args)


FAKE_CTL = """#!/bin/sh
# A stand-in for libcare-ctl (not libcareplus code): records its arguments, prints a captured output, exits 0.
printf '%s\\n' "$@" > "$KVMLAB_FAKE_ARGS"
cat "$KVMLAB_FAKE_OUTPUT"
"""


def test_apply_on_a_host_runs_there_and_reads_the_process_binary_there(tmp_path, monkeypatch):
    bindir = tmp_path / "libcare"
    _fake_tools(bindir)
    (bindir / "libcare-ctl").write_text(FAKE_CTL)
    (tmp_path / "out").write_text(CAPTURED_APPLY_MISMATCH)
    monkeypatch.setenv("KVMLAB_FAKE_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("KVMLAB_FAKE_OUTPUT", str(tmp_path / "out"))
    kpatch = tmp_path / f"{LIB_BUILDID}.kpatch"
    kpatch.write_bytes(_kpatch_bytes("0001", LIB_BUILDID))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        host = _HostHere()
        assert HostSite(host).exe(sleeper.pid) == os.path.realpath(shutil.which("sleep"))
        with pytest.raises(HotpatchFailed) as caught:
            LibcarePlus(bindir).apply(sleeper.pid, kpatch, host)
    finally:
        sleeper.kill()
        sleeper.wait()
    found = caught.value.diagnosis
    assert isinstance(found, BuildIdMismatch)
    assert found.binary_buildid == build_id(shutil.which("sleep")) and found.patch_buildid == LIB_BUILDID
    # the host sees the runner's kpatch and binary: used in place, nothing copied
    assert (tmp_path / "args").read_text().split() == ["patch", "-p", str(sleeper.pid), str(kpatch)]
    assert any(c.startswith(f"PATH={bindir}:$PATH libcare-ctl patch") for c in host.commands), host.commands
    assert not any("mkdir" in c for c in host.commands)


FAKE_SCP = """#!/bin/sh
# scp -q SRC HOST:DST (the fake host has no ssh options), for a host that is this machine: cp SRC DST
cp "$2" "${3#*:}"
"""


def test_a_kpatch_the_host_does_not_see_is_copied_there_once(tmp_path, monkeypatch):
    class Elsewhere(_HostHere):  # sees only its own staging folder, not the runner's files
        def run(self, command: str, *, check: bool = True, timeout: float = 60):
            if command.startswith("sha256sum") and str(tmp_path / "staging") not in command:
                self.commands.append(command)
                return subprocess.CompletedProcess(command, 1, "", "No such file or directory")
            return super().run(command, check=check, timeout=timeout)

    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "scp").write_text(FAKE_SCP)
    (fakebin / "scp").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fakebin}{os.pathsep}{os.environ['PATH']}")
    kpatch = tmp_path / f"{LIB_BUILDID}.kpatch"
    kpatch.write_bytes(_kpatch_bytes("0001", LIB_BUILDID))
    host = Elsewhere()
    site = HostSite(host, staging=str(tmp_path / "staging"))
    staged = site.stage(kpatch)
    assert staged != str(kpatch) and staged.startswith(str(tmp_path / "staging") + "/")
    assert Path(staged).read_bytes() == kpatch.read_bytes() and Path(staged).name == kpatch.name
    copies = sum("mkdir" in c for c in host.commands)
    assert site.stage(kpatch) == staged and sum("mkdir" in c for c in host.commands) == copies == 1


def test_load_base_is_the_executables_offset_zero_mapping():
    maps = ("55ba32ddf000-55ba32e5a000 r--p 00000000 08:01 123 /usr/bin/qemu-system-x86_64\n"
            "55ba32e5a000-55ba33400000 r-xp 0007b000 08:01 123 /usr/bin/qemu-system-x86_64\n"
            "7f46d8f00000-7f46d8f22000 r--p 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert load_base(maps, "/usr/bin/qemu-system-x86_64") == 0x55ba32ddf000
    assert load_base(maps, "/usr/bin/other") is None


def test_lpmakeorig_backups_are_put_back(tmp_path):
    (tmp_path / "monitor").mkdir()
    (tmp_path / "monitor" / "a.c").write_text("patched\n")
    (tmp_path / "monitor" / "a.c.0.lpmakeorig").write_text("original\n")
    assert restore_lpmakeorig(tmp_path) == [str(tmp_path / "monitor" / "a.c")]
    assert (tmp_path / "monitor" / "a.c").read_text() == "original\n"
    assert not list(tmp_path.rglob("*.lpmakeorig"))


def test_the_suites_patches_name_the_files_they_touch_and_hash_by_content():
    assert patched_files([PATCHES / "0001-query-version-package.patch"]) == ["monitor/qmp-cmds-control.c"]
    assert patched_files([PATCHES / "tiny-object_property_allow_set_link.patch"]) == ["qom/object.c"]
    one = patch_set_hash([PATCHES / "0001-query-version-package.patch"])
    two = patch_set_hash([PATCHES / "0001-query-version-package.patch",
                          PATCHES / "0002-query-version-package-level2.patch"])
    assert one != two and len(one) == 16


# -- QEMU source build: apt deb-src handling ----------------------------------

DEBIAN_SOURCES = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_deb_src_stanzas_mirror_every_deb_stanza():
    out = deb_src_stanzas(DEBIAN_SOURCES)
    assert out.count("Types: deb-src") == 2
    assert "URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n" \
           "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in out
    assert "Suites: bookworm-security" in out and "snapshot" not in out


def test_has_deb_src_reads_both_formats(tmp_path):
    (tmp_path / "debian.sources").write_text(DEBIAN_SOURCES)
    none = tmp_path / "none.list"
    assert not has_deb_src(tmp_path, none)
    (tmp_path / "x.sources").write_text("Types: deb deb-src\nURIs: http://x\nSuites: s\nComponents: main\n")
    assert has_deb_src(tmp_path, none)
    (tmp_path / "x.sources").unlink()
    (tmp_path / "y.list").write_text("deb-src http://x s main\n")
    assert has_deb_src(tmp_path, none)


# -- the suite's own threshold file -------------------------------------------

def test_hotpatch_thresholds_load_and_reject_bad_values(tmp_path):
    shipped = load_hotpatch_thresholds()
    assert set(shipped) == {"apply_stall_ms", "apply_frozen_ms", "unapply_stall_ms"}
    bad = tmp_path / "t.yaml"
    bad.write_text("apply_stall_ms: -1\napply_frozen_ms: 1\nunapply_stall_ms: 1\n")
    with pytest.raises(ConfigError, match=r"apply_stall_ms: -1 is not a positive number"):
        load_hotpatch_thresholds(bad)
    bad.write_text("apply_stal_ms: 1\n")
    with pytest.raises(ConfigError, match=r"apply_stal_ms: unknown key"):
        load_hotpatch_thresholds(bad)
