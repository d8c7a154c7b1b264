# softroce-lib.sh - the host side that scripts/softroce-vm.sh and scripts/softroce-2host.sh share (sourced, not run):
# installing the packages, the cached kernel and initramfs (download, PVH vmlinux extraction, module closure,
# busybox initramfs), QEMU option quoting and stopping child processes.
#
# The sourcing script defines log, die, RECIPE_VERSION, PACKAGES and MODULES before sourcing, and CACHE (the cache
# folder) and CACHE_PREFIX (its entries' prefix: each script keeps its own builds) before ensure_cache. Both
# scripts' guests boot the same stage 1 (below); their stage 2 scripts differ.
# shellcheck shell=bash disable=SC2034

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
