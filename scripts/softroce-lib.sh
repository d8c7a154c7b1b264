# softroce-lib.sh - what scripts/softroce-vm.sh and scripts/softroce-2host.sh share (sourced, not run): installing
# the packages, the cached kernel and initramfs (download, PVH vmlinux extraction, module closure, busybox
# initramfs), both guest stages, the per-VM run folder, the QEMU command line, stopping child processes, and the
# reports when a VM fails. It sources scripts/common.sh (log, die, usage, squote).
#
# The sourcing script sets PROG (its message prefix, also the guest's), RECIPE_VERSION and MODULES before
# sourcing, and defines the stage 2 hooks and settings (see stage2_script) and cleanup (see install_traps). Both
# scripts' guests boot the same stage 1 and the same stage 2 but for the hooks.
# shellcheck shell=bash disable=SC2034

DIE_STATUS=125
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

readonly PACKAGES=(qemu-system-x86 busybox-static kmod cpio iproute2 rdma-core ibverbs-providers ibverbs-utils
    rdmacm-utils perftest libibverbs-dev librdmacm-dev)

# Guest stage 1: /init of the initramfs (busybox sh, PID 1). Part of the cached recipe (its text is hashed into the
# cache stamp). It loads the modules, mounts the host's root (9p, read-only) under a tmpfs overlay at /newroot and
# the per-run folder (9p) at /newroot/run/softroce-vm, then runs stage 2 from there.
stage1_init() {
    cat <<'EOF'
#!/bin/busybox sh
export PATH=/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/null >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mark() { read -r up _ </proc/uptime; echo "softroce-vm: [$up] $*"; }
die() {
    echo "softroce-vm: stage 1: $*"
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 60
}
mark "stage 1"
while read -r m; do
    insmod "/lib/modules/$m" || die "insmod $m failed"
done </modules.order
mark "modules loaded"
O9P=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$O9P,ro,cache=loose" hostroot /lower || die "mount of the host root (9p) failed"
mount -t tmpfs -o mode=0755 tmpfs /overlay || die "mount tmpfs"
mkdir -p /overlay/upper /overlay/work
mount -t overlay -o lowerdir=/lower,upperdir=/overlay/upper,workdir=/overlay/work overlay /newroot \
    || die "overlay mount failed"
mkdir -p /newroot/run/softroce-vm && mount -t 9p -o "$O9P,cache=none" svmrun /newroot/run/softroce-vm \
    || die "mount of the run folder (9p) failed"
mark "root mounted"
[ -r /newroot/run/softroce-vm/stage2.sh ] || die "no stage2.sh in the run folder"
. /newroot/run/softroce-vm/stage2.sh
die "stage 2 returned"
EOF
}

# Guest stage 2: sourced by stage 1 (busybox sh, PID 1); written per run, not cached. Sets up the host root at
# /newroot (file systems, the repository), the network and rxe0, then runs COMMAND there through chroot (run.sh, by
# the host's /bin/sh) and powers off. The sourcing script's part, as hooks that print guest sh text:
#   stage2_mounts   further 9p mounts (2host: the folder shared by both VMs)
#   stage2_network  the network, up to the net device that rxe0 goes on (RXE_NETDEV)
#   stage2_start    once rxe0 is ready, before COMMAND starts (2host: wait for "go", start the fault agent)
#   stage2_end      once COMMAND has ended (2host: stop the fault agent)
# and the settings: RXE_NETDEV; RXE_GIDS, the GID indexes to look at, of which RXE_GIDS_NEEDED must be IPv4-mapped
# before rxe0 counts as ready (RXE_GIDS_WHAT says so in the error).
stage2_script() {
    printf '# %s stage 2\n' "$PROG"
    printf 'SVM_PROG=%s SVM_NETDEV=%s SVM_GIDS=%s SVM_GIDS_NEEDED=%s SVM_GIDS_WHAT=%s\n' "$(squote "$PROG")" \
        "$(squote "$RXE_NETDEV")" "$(squote "$RXE_GIDS")" "$RXE_GIDS_NEEDED" "$(squote "$RXE_GIDS_WHAT")"
    cat <<'EOF'
N=/newroot
R=$N/run/softroce-vm
HOSTPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
O9P=trans=virtio,version=9p2000.L,msize=512000
ERRFD=''
finish() {
    sync
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 60
}
fail() {
    echo "$SVM_PROG: $*"
    [ -n "$ERRFD" ] && echo "$SVM_PROG: $*" >&8
    printf '%s\n' "$*" >"$R/error"
    finish
}
# A program of the host root, by absolute path (busybox's chroot would prefer its own applet of the same name).
host() {
    for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
        if [ -x "$N$d/$1" ]; then
            c=$1
            shift
            env -i PATH="$HOSTPATH" /bin/chroot "$N" "$d/$c" "$@"
            return
        fi
    done
    echo "$SVM_PROG: $1 not found in the host root"
    return 127
}
. "$R/vm.sh" || fail "cannot read $R/vm.sh"

# The repository, read-write; the usual file systems.
mkdir -p "$N$SVM_REPO" && mount -t 9p -o "$O9P,cache=mmap" repo "$N$SVM_REPO" \
    || fail "mount of the repository (9p) failed"
EOF
    stage2_mounts
    cat <<'EOF'
mount -t proc proc "$N/proc" || fail "mount /proc"
mount -t sysfs sysfs "$N/sys" || fail "mount /sys"
mount -t devtmpfs devtmpfs "$N/dev" || fail "mount /dev"
mkdir -p "$N/dev/pts" "$N/dev/shm"
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts "$N/dev/pts" || fail "mount /dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$N/dev/shm" || fail "mount /dev/shm"
[ -e "$N/dev/fd" ] || ln -s /proc/self/fd "$N/dev/fd"
[ -e "$N/dev/stdin" ] || ln -s /proc/self/fd/0 "$N/dev/stdin"
[ -e "$N/dev/stdout" ] || ln -s /proc/self/fd/1 "$N/dev/stdout"
[ -e "$N/dev/stderr" ] || ln -s /proc/self/fd/2 "$N/dev/stderr"
if [ "$SVM_TMPFS_TMP" = 1 ]; then
    mount -t tmpfs -o mode=1777 tmpfs "$N/tmp" || fail "mount /tmp"
fi
hostname "$SVM_NAME"

# The two virtio-serial ports that carry COMMAND's stdout and stderr to the host.
port() {
    for f in /sys/class/virtio-ports/*/name; do
        [ -r "$f" ] && read -r pn <"$f" && [ "$pn" = "$1" ] && { d=${f%/name}; echo "/dev/${d##*/}"; return 0; }
    done
    return 1
}
n=0
until OUTPORT=$(port softroce.stdout) && ERRPORT=$(port softroce.stderr) && [ -c "$OUTPORT" ] && [ -c "$ERRPORT" ]
do
    n=$((n + 1)); [ $n -gt 300 ] && fail "virtio-serial ports did not appear"
    sleep 0.1
done
exec 7>"$OUTPORT" 8>"$ERRPORT" || fail "cannot open $OUTPORT / $ERRPORT"
ERRFD=8
mark "file systems mounted"

ulimit -l unlimited || fail "ulimit -l unlimited"
[ -n "$SVM_NOFILE" ] && ulimit -n "$SVM_NOFILE" 2>/dev/null

EOF
    stage2_network
    cat <<'EOF'
host rdma link add rxe0 type rxe netdev "$SVM_NETDEV" || fail "rdma link add rxe0 type rxe netdev $SVM_NETDEV failed"
P=/sys/class/infiniband/rxe0/ports/1
n=0
while :; do
    gids=0
    for i in $SVM_GIDS; do
        g=''
        read -r g <"$P/gids/$i" 2>/dev/null
        case $g in 0000:0000:0000:0000:0000:ffff:*) gids=$((gids + 1)) ;; esac
    done
    st=''
    read -r st <"$P/state" 2>/dev/null
    case $st in *ACTIVE*)
        [ $gids -ge "$SVM_GIDS_NEEDED" ] && [ -c /dev/infiniband/uverbs0 ] && [ -c /dev/infiniband/rdma_cm ] && break ;;
    esac
    n=$((n + 1))
    [ $n -gt $((SVM_RXE_TIMEOUT * 10)) ] &&
        fail "rxe0 port 1 not ACTIVE with $SVM_GIDS_WHAT after $SVM_RXE_TIMEOUT s (state: $st, IPv4 GIDs at indexes $SVM_GIDS: $gids)"
    sleep 0.1
done
mark "rxe0 active"
cat /proc/uptime >"$R/ready"

# COMMAND writes into FIFOs relayed by cat to the ports, so that it may reopen /dev/stdout or /dev/stderr
# (a virtio-serial port can be open only once); whatever stage2_start starts may write there too.
mkdir -p /dev/softroce-vm && mkfifo /dev/softroce-vm/out /dev/softroce-vm/err || fail "mkfifo"
cat /dev/softroce-vm/out >&7 8>&- &
RO=$!
cat /dev/softroce-vm/err >&8 7>&- &
RE=$!
EOF
    stage2_start
    cat <<'EOF'
# (In the background, so that the shell reports no "Killed" when COMMAND dies of a signal.)
env -i /bin/chroot "$N" /bin/sh /run/softroce-vm/run.sh >/dev/softroce-vm/out 2>/dev/softroce-vm/err 7>&- 8>&- &
wait $!
status=$?
mark "command exited with status $status"
EOF
    stage2_end
    cat <<'EOF'
# Background processes that COMMAND (or anything else) left behind may still hold the FIFOs: give the relays 2 s
# to drain.
(sleep 2; kill $RO $RE 2>/dev/null) 7>&- 8>&- &
W=$!
wait $RO $RE
kill $W 2>/dev/null
[ -f "$R/error" ] && fail "$(cat "$R/error")"
sync
echo "$status" >"$R/status.tmp" && mv "$R/status.tmp" "$R/status"
finish
EOF
}

# run.sh: run by the host's /bin/sh in the host root (chroot), with an empty environment: the caller's environment,
# the caller's working directory, then COMMAND as the hook run_command prints it (guest sh text).
run_script() {
    cat <<'EOF'
. /run/softroce-vm/env.sh || exit 125
. /run/softroce-vm/args.sh || exit 125
if ! cd "$SVM_CWD"; then
    echo "cannot change to $SVM_CWD inside the VM" >/run/softroce-vm/error
    exit 125
fi
unset SVM_CWD
EOF
    run_command
}

SUDO=()
as_root() {
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to run: $*"
        SUDO=(sudo)
    fi
    "${SUDO[@]}" "$@"
}

ensure_packages() {
    local missing=() p status
    declare -A installed=()
    while read -r p status; do
        [[ $status == ii* ]] && installed[$p]=1
    done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)
    for p in "${PACKAGES[@]}"; do
        [[ -n ${installed[$p]:-} ]] || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing missing packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update >&2 \
        || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
        --no-install-recommends "${missing[@]}" >&2 || die "apt-get install failed: ${missing[*]}"
}

recipe_stamp() {
    { printf '%s\n' "$RECIPE_VERSION" "${MODULES[@]}"; stage1_init; } | sha256sum | cut -c1-12
}

# Kernel version that linux-image-amd64 points at (e.g. 6.1.0-56-amd64).
latest_kernel_version() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-amd64\)$/\1/p' | head -n1
}

BUILD_TMP=''
cache_tmpdir() {
    BUILD_TMP=$(mktemp -d "$CACHE/.tmp.XXXXXX")
    chmod 755 "$BUILD_TMP"
}

# Is $1 an ELF kernel with a PVH entry note (Xen note type 18), which QEMU boots directly with -kernel?
is_pvh_elf() {
    [[ -s $1 && $(head -c 4 "$1" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]] &&
        LC_ALL=C grep -aqP '\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00' "$1"
}

# extract_vmlinux BZIMAGE OUT: the uncompressed kernel inside a bzImage. Booting it through PVH skips the
# decompression, which takes seconds under TCG.
extract_vmlinux() {
    local img=$1 out=$2 off magic tool
    for magic in xz zstd gzip; do
        case $magic in
            xz) command -v xz >/dev/null || continue; tool=(xz -dc --single-stream); magic=$'\xfd7zXZ' ;;
            zstd) command -v zstd >/dev/null || continue; tool=(zstd -qdc); magic=$'\x28\xb5\x2f\xfd' ;;
            gzip) tool=(gzip -dc); magic=$'\x1f\x8b\x08' ;;
        esac
        while read -r off; do
            tail -c +$((off + 1)) "$img" | "${tool[@]}" >"$out" 2>/dev/null || true
            is_pvh_elf "$out" && return 0
        done < <(LC_ALL=C grep -abo "$magic" "$img" | cut -d: -f1 | head -n 4)
    done
    rm -f "$out"
    return 1
}

# Sets KERNEL_IMAGE and INITRD, building the cache if needed.
ensure_cache() {
    local stamp kver dir candidates=()
    stamp=$(recipe_stamp)
    mkdir -p "$CACHE"
    if [[ -n ${SOFTROCE_VM_KERNEL:-} ]]; then
        candidates=("$CACHE/$CACHE_PREFIX-r$RECIPE_VERSION-$stamp-$SOFTROCE_VM_KERNEL")
    else
        # Newest kernel version first.
        mapfile -t candidates < <(printf '%s\n' "$CACHE/$CACHE_PREFIX-r$RECIPE_VERSION-$stamp-"* | sort -rV)
    fi
    for dir in "${candidates[@]}"; do
        if [[ -f $dir/complete && -f $dir/kernel && -f $dir/initrd.img ]]; then
            KERNEL_IMAGE=$dir/kernel INITRD=$dir/initrd.img
            return 0
        fi
    done

    # Build, under a lock so that concurrent first runs do not race.
    local lockfd
    exec {lockfd}>"$CACHE/.lock"
    flock "$lockfd"
    kver=${SOFTROCE_VM_KERNEL:-}
    if [[ -z $kver ]]; then
        kver=$(latest_kernel_version)
        if [[ -z $kver ]]; then
            as_root apt-get -o DPkg::Lock::Timeout=600 update >&2 || die "apt-get update failed"
            kver=$(latest_kernel_version)
        fi
        [[ -n $kver ]] || die "cannot determine the kernel version (apt-cache depends linux-image-amd64)"
    fi
    dir=$CACHE/$CACHE_PREFIX-r$RECIPE_VERSION-$stamp-$kver
    if [[ -f $dir/complete ]]; then   # built meanwhile by another run
        KERNEL_IMAGE=$dir/kernel INITRD=$dir/initrd.img
        exec {lockfd}>&-
        return 0
    fi
    rm -rf "$CACHE"/.tmp.*   # left by interrupted builds (we hold the lock)
    log "first use: preparing kernel $kver and initramfs in $CACHE (one-time)"

    # 1. The kernel package.
    local deb debs
    debs=("$CACHE/deb/linux-image-${kver}_"*.deb)
    deb=${debs[0]:-}
    if [[ ! -f $deb ]]; then
        cache_tmpdir
        if ! (cd "$BUILD_TMP" && apt-get -o APT::Sandbox::User=root download "linux-image-$kver" >&2); then
            as_root apt-get -o DPkg::Lock::Timeout=600 update >&2 || die "apt-get update failed"
            (cd "$BUILD_TMP" && apt-get -o APT::Sandbox::User=root download "linux-image-$kver" >&2) \
                || die "apt-get download linux-image-$kver failed"
        fi
        mkdir -p "$CACHE/deb"
        debs=("$BUILD_TMP/linux-image-${kver}_"*.deb)
        deb=${debs[0]:-}
        [[ -f $deb ]] || die "apt-get download did not produce linux-image-${kver}_*.deb"
        mv "$deb" "$CACHE/deb/"
        deb=$CACHE/deb/${deb##*/}
        rm -rf "$BUILD_TMP"; BUILD_TMP=
    fi

    # 2. The unpacked modules (with modules.dep).
    local kdir=$CACHE/kernel-$kver
    if [[ ! -f $kdir/complete ]]; then
        cache_tmpdir
        dpkg -x "$deb" "$BUILD_TMP" || die "dpkg -x $deb failed"
        depmod -b "$BUILD_TMP" "$kver" || die "depmod failed"
        [[ -f $BUILD_TMP/boot/vmlinuz-$kver ]] || die "no /boot/vmlinuz-$kver in $deb"
        touch "$BUILD_TMP/complete"
        rm -rf "$kdir"
        mv "$BUILD_TMP" "$kdir"
        BUILD_TMP=
    fi

    # 3. The initramfs: busybox-static, modules in load order, stage 1 init.
    cache_tmpdir
    local root=$BUILD_TMP/root m line path name deps
    mkdir -p "$root"/{bin,dev,proc,sys,lower,overlay,newroot,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    local applets
    mapfile -t applets < <("$root/bin/busybox" --list)
    for m in "${applets[@]}"; do
        [[ $m == busybox ]] || ln -s busybox "$root/bin/$m"
    done
    ((EUID == 0)) && mknod -m 600 "$root/dev/console" c 5 1
    declare -A seen=()
    : >"$root/modules.order"
    for m in "${MODULES[@]}"; do
        deps=$(modprobe -d "$kdir" -S "$kver" --show-depends "$m") || die "module $m not found in $kver"
        while read -r line; do
            [[ $line == insmod\ * ]] || continue
            path=${line#insmod }
            path=${path%% *}
            name=${path##*/}
            [[ -n ${seen[$name]:-} ]] && continue
            seen[$name]=1
            case $name in
                *.ko) cp "$path" "$root/lib/modules/$name" ;;
                *.ko.xz) name=${name%.xz}; xz -dc "$path" >"$root/lib/modules/$name" ;;
                *.ko.zst) name=${name%.zst}; zstd -qdc "$path" >"$root/lib/modules/$name" ;;
                *.ko.gz) name=${name%.gz}; gzip -dc "$path" >"$root/lib/modules/$name" ;;
                *) die "unexpected module file $path" ;;
            esac
            echo "$name" >>"$root/modules.order"
        done <<<"$deps"
    done
    grep -qx rdma_rxe.ko "$root/modules.order" || die "rdma_rxe missing from the module list"
    stage1_init >"$root/init"
    chmod 755 "$root/init"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) \
        >"$BUILD_TMP/initrd.img" || die "cpio failed"
    if ! extract_vmlinux "$kdir/boot/vmlinuz-$kver" "$BUILD_TMP/kernel"; then
        log "note: cannot extract an uncompressed PVH kernel; using the bzImage (slower boot)"
        cp "$kdir/boot/vmlinuz-$kver" "$BUILD_TMP/kernel"
    fi
    cp "$root/modules.order" "$BUILD_TMP/modules.order"
    rm -rf "$root"
    touch "$BUILD_TMP/complete"
    rm -rf "$dir"
    mv "$BUILD_TMP" "$dir"
    BUILD_TMP=
    # Builds of other recipes are stale now.
    local old
    for old in "$CACHE"/"$CACHE_PREFIX"-*; do
        [[ $old == "$dir" ]] || rm -rf "$old"
    done
    exec {lockfd}>&-
    log "cache ready: $dir"
    KERNEL_IMAGE=$dir/kernel INITRD=$dir/initrd.img
}

kill_pid() {   # kill_pid PID: TERM, then KILL after 3 s; only our own children, by PID
    local pid=$1 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# QEMU option values: a comma is written twice.
qesc() { printf '%s' "${1//,/,,}"; }

# The guest's CPU model and clock source, the same for both VM scripts (see the README's test-bed section for what
# each choice measured): SOFTROCE_VM_CPU is QEMU's -cpu model, SOFTROCE_VM_CLOCK the guest's clock source (tsc:
# booted with tsc=reliable, so clock_gettime runs in the vDSO; hpet: every clock read traps into the emulated HPET).
guest_cpu() { printf '%s' "${SOFTROCE_VM_CPU:-qemu64}"; }
# The kernel command line: console to a file only, quiet, a panic (or oops) ends the VM at once (-no-reboot). Boot
# speed-ups under TCG: no crypto self-tests (~0.5 s), no ACPI PCI IRQ routing (~1 s of _PRT evaluation for 4 devices).
guest_append() {
    local append="console=ttyS0 quiet loglevel=4 panic=1 oops=panic 8250.nr_uarts=1 cryptomgr.notests pci=noacpi"
    case ${SOFTROCE_VM_CLOCK:-hpet} in
        tsc) append+=" tsc=reliable clocksource=tsc" ;;
        hpet) append+=" clocksource=hpet" ;;
        *) die "SOFTROCE_VM_CLOCK must be tsc or hpet" ;;
    esac
    printf '%s %s' "$append" "${SOFTROCE_VM_APPEND:-}"
}

# ---------------------------------------------------------------------------------------------------------------
# The host side of a run.

# The 9p options of every -virtfs.
readonly QEMU_9P=security_model=none,multidevs=remap

# Sets TMPFS_TMP: 1 unless the repository or the caller's directory is under /tmp (then the guest keeps the host's).
set_tmpfs_tmp() {
    TMPFS_TMP=1
    [[ $REPO == /tmp || $REPO == /tmp/* || $PWD == /tmp || $PWD == /tmp/* ]] && TMPFS_TMP=0
    return 0
}

# vm_folder DIR [NAME=VALUE...]: the files a VM's per-run folder (DIR, its "svmrun" 9p share) needs: vm.sh (stage
# 2's settings: SVM_REPO, SVM_TMPFS_TMP from TMPFS_TMP, SVM_RXE_TIMEOUT from RXE_TIMEOUT, SVM_NOFILE, then each
# NAME=VALUE), env.sh (the caller's PATH, HOME, TERM and LND_*, LNET_*, SWIFT_*, RDMA_*, SOFTROCE_* variables but
# those named in ENV_OWN, then SOFTROCE_VM=1; the caller may append), stage2.sh, run.sh and the empty stdout,
# stderr and console.log. args.sh (SVM_CWD and the command) is the caller's.
ENV_OWN=()
vm_folder() {
    local d=$1 kv name own
    shift
    {
        printf 'SVM_REPO=%s\n' "$(squote "$REPO")"
        printf 'SVM_TMPFS_TMP=%s\n' "$TMPFS_TMP"
        printf 'SVM_RXE_TIMEOUT=%s\n' "$RXE_TIMEOUT"
        printf 'SVM_NOFILE=%s\n' "$(ulimit -n)"
        for kv in "$@"; do
            printf '%s=%s\n' "${kv%%=*}" "$(squote "${kv#*=}")"
        done
    } >"$d/vm.sh"
    {
        for name in PATH HOME TERM; do
            [[ -v $name ]] && printf 'export %s=%s\n' "$name" "$(squote "${!name}")"
        done
        while IFS= read -r name; do
            for own in "${ENV_OWN[@]}"; do
                [[ $name == "$own" ]] && continue 2
            done
            case $name in
                LND_* | LNET_* | SWIFT_* | RDMA_* | SOFTROCE_*)
                    printf 'export %s=%s\n' "$name" "$(squote "${!name}")" ;;
            esac
        done < <(compgen -e)
        printf 'export SOFTROCE_VM=1\n'
    } >"$d/env.sh"
    stage2_script >"$d/stage2.sh"
    run_script >"$d/run.sh"
    : >"$d/stdout"
    : >"$d/stderr"
    : >"$d/console.log"
}

# qemu_command NAME CPUS MEM DIR [OPTION...]: sets QEMU_CMD, the QEMU command line of a VM whose per-run folder is
# DIR: its console and output files there, the cached kernel and initramfs, the host root (read-only), the
# repository and DIR over 9p, the two virtio-serial ports; OPTION... (the network, more shares) after the kernel.
QEMU_CMD=()
qemu_command() {
    local name=$1 cpus=$2 mem=$3 d=$4
    shift 4
    QEMU_CMD=(qemu-system-x86_64 -name "$name" -accel tcg -cpu "$(guest_cpu)" -machine pc -smp "$cpus" -m "$mem"
        -nodefaults -no-user-config -display none -no-reboot -monitor none
        -serial "file:$(qesc "$d/console.log")"
        -kernel "$(qesc "$KERNEL_IMAGE")" -initrd "$(qesc "$INITRD")"
        -append "$(guest_append)"
        "$@"
        -virtfs "local,path=/,mount_tag=hostroot,readonly=on,$QEMU_9P"
        -virtfs "local,path=$(qesc "$REPO"),mount_tag=repo,$QEMU_9P"
        -virtfs "local,path=$(qesc "$d"),mount_tag=svmrun,$QEMU_9P"
        -device "virtio-serial-pci,id=vser"
        -chardev "file,id=svmout,append=on,path=$(qesc "$d/stdout")"
        -device "virtserialport,bus=vser.0,chardev=svmout,name=softroce.stdout"
        -chardev "file,id=svmerr,append=on,path=$(qesc "$d/stderr")"
        -device "virtserialport,bus=vser.0,chardev=svmerr,name=softroce.stderr")
}

# show_console_tail DIR LINES [HOST]: the last LINES lines of the console log and QEMU's messages of the VM whose
# per-run folder is DIR (HOST: A or B, for the two-host script's VMs).
show_console_tail() {
    local d=$1 lines=$2 h=${3:-} console qemu
    if [[ -n $h ]]; then console="host $h's console" qemu="host $h's QEMU"; else console="the VM console" qemu=QEMU; fi
    if [[ -s $d/console.log ]]; then
        log "last lines of $console:"
        tail -n "$lines" "$d/console.log" | tr -d '\r' | sed "s/^/$PROG: $h| /" >&2
    fi
    if [[ -s $d/qemu.log ]]; then
        log "$qemu said:"
        tail -n 20 "$d/qemu.log" | sed "s/^/$PROG: $h| /" >&2
    fi
}

# report_vm_failure DIR WHO [QEMU-STATUS]: why the VM of per-run folder DIR left no status (WHO prefixes the
# message, e.g. "host A: ").
report_vm_failure() {
    local d=$1 who=$2 rc=${3:-}
    if [[ -f $d/error ]]; then
        log "${who}VM setup failed: $(<"$d/error")"
    elif grep -q 'Kernel panic' "$d/console.log" 2>/dev/null; then
        log "${who}the VM crashed (kernel panic) before COMMAND finished"
    elif [[ -f $d/ready ]]; then
        log "${who}the VM stopped before COMMAND finished (${rc:+QEMU exit status $rc; }VM crash?)"
    else
        log "${who}the VM did not come up${rc:+ (QEMU exit status $rc)}"
    fi
}

# remove_run_folder KEEP: removes RUN (unless KEEP is 1: then says where it is) and an unfinished cache build.
remove_run_folder() {
    if [[ -n $RUN ]]; then
        if [[ $1 == 1 ]]; then
            log "run folder kept: $RUN"
        else
            rm -rf "$RUN"
        fi
        RUN=
    fi
    [[ -n $BUILD_TMP ]] && rm -rf "$BUILD_TMP"
    BUILD_TMP=
    return 0
}

# start_harness CACHE-PREFIX WHAT: REPO, the cache (CACHE-PREFIX: the script's own builds in it), the traps (the
# script's cleanup on exit; on SIGINT, SIGTERM, SIGHUP "interrupted (SIG); stopping WHAT", cleanup, then exit
# 130, 143, 129), the packages, and KERNEL_IMAGE and INITRD.
start_harness() {
    REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
    CACHE=$REPO/.softroce
    CACHE_PREFIX=$1
    STOPPING=$2
    trap cleanup EXIT
    trap 'on_signal INT' INT
    trap 'on_signal TERM' TERM
    trap 'on_signal HUP' HUP
    ensure_packages
    ensure_cache
}
# shellcheck disable=SC2317  # invoked from traps
on_signal() {
    trap - INT TERM HUP
    log "interrupted ($1); stopping $STOPPING"
    cleanup
    case $1 in INT) exit 130 ;; HUP) exit 129 ;; *) exit 143 ;; esac
}
