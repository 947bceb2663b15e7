#!/usr/bin/python3
"""libvirt's side of the comparison, through its Python binding (one
connection for every call, so process start-up never dominates).

Usage: libvirt_bench.py BASE_QCOW2 KERNEL INITRD CMDLINE WORKDIR RUNS DEFINED RUNNING RESTART_GUESTS
Prints one JSON object of medians (milliseconds) and RSS figures.
"""
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

import libvirt

base, kernel, initrd, cmdline, work = sys.argv[1:6]
runs, defined, running, restart_n = (int(x) for x in sys.argv[6:10])
os.makedirs(work, exist_ok=True)
conn = libvirt.open("qemu:///system")


def ms(t):
    return (time.perf_counter() - t) * 1000.0


def clone(name):
    disk = os.path.join(work, name + ".qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", disk], check=True)
    subprocess.run(["qemu-img", "resize", "-q", disk, "1G"], check=True)
    return disk


def xml(name, disk, memory=128):
    return f"""<domain type='qemu'>
  <name>{name}</name><uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>{memory}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel><initrd>{initrd}</initrd><cmdline>{cmdline}</cmdline></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
      <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='pty'/><memballoon model='virtio'/>
  </devices>
</domain>"""


def rss_kib(names):
    total = 0
    for n in names:
        try:
            pids = subprocess.run(["pidof", n], capture_output=True, text=True).stdout.split()
        except FileNotFoundError:
            pids = []
        for p in pids:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
    return total


def cleanup(prefix):
    for d in conn.listAllDomains():
        if d.name().startswith(prefix):
            if d.isActive():
                d.destroy()
            d.undefine()
    for f in os.listdir(work):
        if f.startswith(prefix):
            os.unlink(os.path.join(work, f))


out = {}
cleanup("lvb-")
out["rss_fresh_kib"] = rss_kib(["libvirtd", "virtlogd"])

# 1-2. create+start (paused) and stop+delete, with a linked clone.
create, delete = [], []
for i in range(runs):
    name = f"lvb-run-{i}"
    t = time.perf_counter()
    disk = clone(name)
    dom = conn.defineXML(xml(name, disk))
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    create.append(ms(t))
    t = time.perf_counter()
    dom.destroy()
    dom.undefine()
    os.unlink(disk)
    delete.append(ms(t))
out["create_start_ms"] = statistics.median(create)
out["stop_delete_ms"] = statistics.median(delete)


def list_ms(reps=20):
    vals = []
    for _ in range(reps):
        t = time.perf_counter()
        doms = conn.listAllDomains()
        for d in doms:
            d.info()
        vals.append(ms(t))
    return statistics.median(vals), len(doms)


# 3. list with 1, 100, `defined` VMs (the first `running` of them running, paused).
disk = clone("lvb-shared")
made = 0
for target in sorted({1, min(100, defined), defined}):
    while made < target:
        conn.defineXML(xml(f"lvb-def-{made}", disk))
        made += 1
    if target == min(100, defined):
        # start the first `running` paused (each on its own clone)
        for i in range(running):
            conn.lookupByName(f"lvb-def-{i}").undefine()
            ci = clone(f"lvb-r{i}")
            conn.defineXML(xml(f"lvb-def-{i}", ci, memory=64)).createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    m, n = list_ms()
    out[f"list_{target}_ms"] = m
    if target == min(100, defined):
        # 4. stats of 1 and of every running guest.
        one = conn.lookupByName("lvb-def-0")
        vals = []
        for _ in range(20):
            t = time.perf_counter()
            conn.domainListGetStats([one], 0)
            vals.append(ms(t))
        out["stats_1_ms"] = statistics.median(vals)
        vals = []
        for _ in range(10):
            t = time.perf_counter()
            conn.getAllDomainStats(0, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
            vals.append(ms(t))
        out["stats_all_ms"] = statistics.median(vals)
        out["rss_running_kib"] = rss_kib(["libvirtd", "virtlogd"])
out["rss_defined_kib"] = rss_kib(["libvirtd", "virtlogd"])

# 6. restart with `restart_n` running guests: libvirtd killed and started
#    again, until every guest is listed as running.
for i in range(running, defined):
    conn.lookupByName(f"lvb-def-{i}").undefine()
active = [d for d in conn.listAllDomains() if d.isActive()]
for d in active[restart_n:]:
    d.destroy()
conn.close()
pid = subprocess.run(["pidof", "libvirtd"], capture_output=True, text=True).stdout.split()[0]
os.kill(int(pid), 9)
time.sleep(0.2)
t = time.perf_counter()
subprocess.Popen(["setsid", "libvirtd", "-d"]).wait()
while True:
    try:
        conn = libvirt.open("qemu:///system")
        up = [d for d in conn.listAllDomains() if d.isActive()]
        if len(up) >= restart_n:
            break
        conn.close()
    except libvirt.libvirtError:
        pass
    time.sleep(0.01)
out["restart_ms"] = ms(t)
out["restart_guests"] = restart_n
cleanup("lvb-")
out["version"] = conn.getLibVersion()
print(json.dumps(out))
