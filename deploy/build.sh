#!/usr/bin/env bash
# Release binaries for the fleet, per flavour, and a tarball with checksums.
#
#   deploy/build.sh                                  # pi4 and pi5: shoal-node
#   deploy/build.sh --flavour pi4 --with-manager     # and the manager, `shoal`, for the Pi
#   deploy/build.sh --flavour x86_64                 # both binaries for any x86-64 Linux
#   deploy/build.sh --flavour x86_64 --prebuilt target/release   # package what is there
#
# Flavours (target triple, -C target-cpu):
#   pi4     aarch64-unknown-linux-gnu      cortex-a72  (Pi 4, 400, CM4; 64-bit OS)
#   pi5     aarch64-unknown-linux-gnu      cortex-a76  (Pi 5, CM5; 64-bit OS)
#   armv7   armv7-unknown-linux-gnueabihf  cortex-a7   (32-bit Raspberry Pi OS on Pi 2/3/4:
#           the A7 baseline adds NEON, VFPv4 and 32 double registers to the target's plain
#           ARMv7-A + VFPv3-D16; the Pi 3's A53 and the Pi 4's A72 run A7 code in AArch32)
#   x86_64  x86_64-unknown-linux-gnu       (none: baseline x86-64, runs on any x86-64 CPU)
#
# Each flavour builds with the workspace's `deploy` profile (fat LTO, one codegen unit, stripped,
# dependencies optimised for size) in its own target directory, target/deploy/<flavour> (under
# CARGO_TARGET_DIR where that is set). One directory for all was tried: cargo hashes the flags
# into the names of compiled crates, but not into the output directories of build scripts, so
# pi4 and pi5 re-ran each other's build scripts and rebuilt everything above them. The
# target-cpu goes into
# CARGO_TARGET_<TRIPLE>_RUSTFLAGS, which cargo applies to the target's crates only: build scripts
# and proc macros run on this machine and are built for it as usual. Link options go to the two
# binaries alone, with `cargo rustc -- ...`.
#
# The output, which the ansible roles rely on:
#   <out>/shoal-<version>-<flavour>/bin/shoal-node
#   <out>/shoal-<version>-<flavour>/bin/shoal          (x86_64, --with-manager, or --prebuilt)
#   <out>/shoal-<version>-<flavour>/SHA256SUMS         (sha256sum of bin/*)
#   <out>/shoal-<version>-<flavour>/BUILDINFO
#   <out>/shoal-<version>-<flavour>.tar.gz
#   <out>/SHA256SUMS                                   (over the version's tarballs in <out>)
#
# The manager links the system NetCDF (and through it HDF5), so a cross-built `shoal` needs the
# target's libraries. netcdf-sys finds NetCDF with NETCDF_DIR or `nc-config` (not pkg-config),
# and hdf5-metno-sys with HDF5_DIR or pkg-config, then checks the library's version by loading
# it into the build script, which cannot load an arm64 library on an x86-64 machine. This script
# therefore points both at small directories of links (target/deploy/sysroot/<arch>/shim) into a
# sysroot holding the target's libraries, with a host libhdf5 of the same version for that check.
# The sysroot is either the target's packages unpacked under target/deploy/sysroot/<arch>
# (--fetch-sysroot: `apt-get download`, nothing is installed) or, where they are installed with
# multiarch, the machine's own /usr/lib/<arch triple>. On Debian 12 libnetcdf-dev and
# libhdf5-dev are not Multi-Arch: same, so installing the :arm64 ones removes the host's, which
# the host build and tests need; --fetch-sysroot avoids that.
set -euo pipefail

# All of it in one function, called on the last line: bash has then read the whole file before
# it starts, and editing the file during a (long) build cannot change what that build runs.
main() {

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# Cargo's target directory: CARGO_TARGET_DIR where set (CI keeps one outside the clone),
# otherwise the workspace's own target/.
TARGET_BASE="$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")"

SIZE_LIMIT=8000000 # bytes: the aarch64 shoal-node must fit in 8 MB
ALL_FLAVOURS="pi4 pi5 armv7 x86_64"

usage() {
    cat <<'EOF'
usage: deploy/build.sh [--flavour pi4|pi5|armv7|x86_64]... [--out DIR] [--with-manager]
                       [--prebuilt DIR] [--check-size] [--fetch-sysroot] [--sysroot DIR]
                       [--no-smoke] [--jobs N]

  --flavour F      build flavour F; repeat for several (default: pi4 and pi5)
  --out DIR        where the packages go (default: deploy/dist)
  --with-manager   also build the manager `shoal` for cross flavours (x86_64 always has it);
                   needs the target's NetCDF and HDF5 libraries (see --fetch-sysroot)
  --prebuilt DIR   build nothing: package the shoal-node (and shoal, when there) already in DIR,
                   for one flavour (inferred from the binary where it can be)
  --check-size     fail when an aarch64 shoal-node is over 8 MB (8,000,000 bytes)
  --fetch-sysroot  download the target's NetCDF and HDF5 packages (and, for the smoke run, the
                   libraries they load) with `apt-get download` into target/deploy/sysroot/<arch>
  --sysroot DIR    use DIR (a root with usr/include and usr/lib/<arch triple>) for the manager's
                   target libraries instead
  --no-smoke       do not run the binaries (under qemu-user for the Pi flavours) after building
  --jobs N         cargo -j N
EOF
}

die() {
    echo "deploy/build.sh: error: $*" >&2
    exit 1
}
note() { echo "==> $*" >&2; }

flavours=()
out="$ROOT/deploy/dist"
with_manager=0
prebuilt=""
check_size=0
fetch_sysroot=0
sysroot_override=""
smoke=1
jobs=()
while [ $# -gt 0 ]; do
    arg="$1"
    case "$arg" in
        --*=*) set -- "${arg%%=*}" "${arg#*=}" "${@:2}"; continue ;;
    esac
    need() { [ $# -ge 2 ] || die "$1 needs a value (try --help)"; }
    case "$arg" in
        --flavour|--flavor) need "$@"; flavours+=("$2"); shift 2 ;;
        --out) need "$@"; out="$2"; shift 2 ;;
        --with-manager) with_manager=1; shift ;;
        --prebuilt) need "$@"; prebuilt="$2"; shift 2 ;;
        --check-size) check_size=1; shift ;;
        --fetch-sysroot) fetch_sysroot=1; shift ;;
        --sysroot) need "$@"; sysroot_override="$2"; shift 2 ;;
        --no-smoke) smoke=0; shift ;;
        --jobs|-j) need "$@"; jobs=(-j "$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument \`$arg\` (try --help)" ;;
    esac
done

# --- flavours ------------------------------------------------------------------------------

# Sets TRIPLE, CPU, DEBARCH, GNU (the Debian multiarch triple), QEMU.
flavour_info() {
    case "$1" in
        pi4) TRIPLE=aarch64-unknown-linux-gnu CPU=cortex-a72 DEBARCH=arm64 GNU=aarch64-linux-gnu QEMU=qemu-aarch64 ;;
        pi5) TRIPLE=aarch64-unknown-linux-gnu CPU=cortex-a76 DEBARCH=arm64 GNU=aarch64-linux-gnu QEMU=qemu-aarch64 ;;
        armv7) TRIPLE=armv7-unknown-linux-gnueabihf CPU=cortex-a7 DEBARCH=armhf GNU=arm-linux-gnueabihf QEMU=qemu-arm ;;
        x86_64) TRIPLE=x86_64-unknown-linux-gnu CPU="" DEBARCH=amd64 GNU=x86_64-linux-gnu QEMU="" ;;
        *) die "unknown flavour \`$1\` (one of: $ALL_FLAVOURS)" ;;
    esac
}

host_triple="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')" || true
[ -n "$host_triple" ] || die "rustc not found (install Rust with rustup)"
[ "$host_triple" = x86_64-unknown-linux-gnu ] ||
    echo "deploy/build.sh: warning: written for an x86-64 Linux build machine, this is $host_triple" >&2

is_cross() { [ "$TRIPLE" != "$host_triple" ]; }

# Which flavour a prebuilt binary is for, from its ELF header (aarch64 cannot say pi4 or pi5).
infer_flavour() {
    local desc
    desc="$(file -b "$1")"
    case "$desc" in
        *x86-64*) echo x86_64 ;;
        *"ARM aarch64"*) die "$1 is an aarch64 binary: say --flavour pi4 or --flavour pi5" ;;
        *"32-bit"*ARM*) echo armv7 ;;
        *) die "cannot tell the flavour of $1 ($desc): give --flavour" ;;
    esac
}

if [ -n "$prebuilt" ]; then
    [ -d "$prebuilt" ] || die "--prebuilt $prebuilt: no such directory"
    prebuilt="$(cd "$prebuilt" && pwd)"
    [ -f "$prebuilt/shoal-node" ] || die "--prebuilt $prebuilt: no shoal-node there (build it first)"
    if [ ${#flavours[@]} -eq 0 ]; then
        command -v file >/dev/null || die "\`file\` not found (apt-get install file)"
        inferred="$(infer_flavour "$prebuilt/shoal-node")" || exit 1
        flavours=("$inferred")
    fi
    [ ${#flavours[@]} -eq 1 ] || die "--prebuilt packages one flavour: give a single --flavour"
fi
[ ${#flavours[@]} -gt 0 ] || flavours=(pi4 pi5)
for f in "${flavours[@]}"; do flavour_info "$f"; done

# --- what the build needs, checked up front -------------------------------------------------

for tool in file sha256sum tar gzip git; do
    command -v "$tool" >/dev/null || die "\`$tool\` not found (apt-get install $tool)"
done
if [ -z "$prebuilt" ]; then
    command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
    sysroot_rust="$(rustc --print sysroot)"
    for f in "${flavours[@]}"; do
        flavour_info "$f"
        [ -d "$sysroot_rust/lib/rustlib/$TRIPLE/lib" ] ||
            die "the Rust standard library for $TRIPLE is not installed (rustup target add $TRIPLE)"
        if is_cross; then
            command -v "$GNU-gcc" >/dev/null ||
                die "cross linker $GNU-gcc not found (apt-get install gcc-$GNU)"
        fi
    done
fi
if [ "$smoke" = 1 ]; then
    for f in "${flavours[@]}"; do
        flavour_info "$f"
        if is_cross; then
            command -v "$QEMU" >/dev/null ||
                die "$QEMU not found, needed for the smoke run (apt-get install qemu-user, or --no-smoke)"
            [ -d "/usr/$GNU/lib" ] ||
                die "/usr/$GNU/lib not found, the $DEBARCH C library qemu runs with (apt-get install libc6-$DEBARCH-cross)"
        fi
    done
fi
for v in RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS; do
    if [ -n "${!v:-}" ]; then
        echo "deploy/build.sh: warning: ignoring $v (it would replace the per-target flags)" >&2
        unset "$v"
    fi
done

# --- version, commit, timestamps ---------------------------------------------------------------

version="$(awk '/^\[workspace\.package\]/ { s = 1; next } /^\[/ { s = 0 }
    s && $1 == "version" { gsub(/[" ]/, "", $3); print $3; exit }' Cargo.toml)"
[ -n "$version" ] || die "no version in [workspace.package] of Cargo.toml"
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$commit" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit-dirty"
fi
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
rustc_version="$(rustc -V)"

mkdir -p "$out"
out="$(cd "$out" && pwd)"

# --- the manager's target libraries --------------------------------------------------------

# Packages the manager links against, for the target architecture.
LINK_PACKAGES="libnetcdf19 libnetcdf-dev libhdf5-103-1 libhdf5-hl-100 libhdf5-dev"
# Provided by the cross toolchain (/usr/<gnu>): not downloaded.
TOOLCHAIN_PACKAGES="libc6 libgcc-s1 libstdc++6 gcc-12-base gcc-13-base gcc-14-base"

fetch_sysroot() { # $1 = sysroot dir; uses DEBARCH, GNU
    local dir="$1" pkgs p
    command -v apt-get >/dev/null || die "--fetch-sysroot needs apt-get (Debian or Ubuntu)"
    if ! apt-cache show "libnetcdf19:$DEBARCH" >/dev/null 2>&1; then
        die "apt knows no $DEBARCH packages; as root, once: dpkg --add-architecture $DEBARCH && apt-get update"
    fi
    # The link-time packages, and every library libnetcdf19 loads (for the qemu smoke run).
    pkgs="$LINK_PACKAGES $(apt-cache depends --recurse --no-recommends --no-suggests \
        --no-conflicts --no-breaks --no-replaces --no-enhances "libnetcdf19:$DEBARCH" 2>/dev/null |
        sed -n "s/^\([a-z0-9][a-z0-9.+-]*\):$DEBARCH\$/\1/p" | sort -u)"
    pkgs="$(for p in $pkgs; do case " $TOOLCHAIN_PACKAGES " in *" $p "*) ;; *) echo "$p:$DEBARCH" ;; esac; done | sort -u)"
    note "downloading $(echo "$pkgs" | wc -l) $DEBARCH packages into $dir"
    mkdir -p "$dir/debs"
    # apt's sandbox user must be able to write there; it is our own directory.
    (cd "$dir/debs" && apt-get download $pkgs 2>&1 >/dev/null | grep -v "unsandboxed" >&2; exit "${PIPESTATUS[0]}") ||
        die "apt-get download failed for: $(echo $pkgs)"
    for p in "$dir"/debs/*.deb; do dpkg-deb -x "$p" "$dir"; done
    (cd "$dir/debs" && ls *.deb) >"$dir/PACKAGES"
}

# The first of the given paths that exists.
first_of() { local p; for p in "$@"; do [ -e "$p" ] && { echo "$p"; return 0; }; done; return 1; }

# Sets SYSROOT, TARGET_LIB_ENV (NETCDF_DIR, HDF5_DIR for the target), LINK_ARGS, SMOKE_LIBS.
prepare_target_libs() {
    local own="$ROOT/target/deploy/sysroot/$DEBARCH" libdir nc h5 ncinc h5inc hosth5 shim v1 v2
    if [ -n "$sysroot_override" ]; then
        SYSROOT="$(cd "$sysroot_override" && pwd)"
    else
        if [ "$fetch_sysroot" = 1 ] && ! ls "$own/usr/lib/$GNU"/libnetcdf.so* >/dev/null 2>&1; then
            fetch_sysroot "$own"
        fi
        if ls "$own/usr/lib/$GNU"/libnetcdf.so* >/dev/null 2>&1; then
            SYSROOT="$own"
        elif ls "/usr/lib/$GNU"/libnetcdf.so* >/dev/null 2>&1; then
            SYSROOT="/" # installed with multiarch
        else
            die "the $DEBARCH NetCDF library (package libnetcdf19:$DEBARCH, with libnetcdf-dev:$DEBARCH and libhdf5-dev:$DEBARCH for the headers) is missing, so \`shoal\` cannot be linked for $TRIPLE. Add --fetch-sysroot to download them into target/deploy/sysroot/$DEBARCH (needs, as root, once: dpkg --add-architecture $DEBARCH && apt-get update), or build without --with-manager"
        fi
    fi
    libdir="$SYSROOT/usr/lib/$GNU"
    nc="$(first_of "$libdir/libnetcdf.so" "$libdir"/libnetcdf.so.[0-9]*)" ||
        die "no libnetcdf.so in $libdir (package libnetcdf19:$DEBARCH)"
    h5="$(first_of "$libdir/hdf5/serial/libhdf5.so" "$libdir/libhdf5_serial.so" "$libdir"/libhdf5_serial.so.[0-9]*)" ||
        die "no libhdf5 in $libdir (package libhdf5-103-1:$DEBARCH)"
    ncinc="$(first_of "$SYSROOT/usr/include/netcdf_meta.h" /usr/include/netcdf_meta.h)" ||
        die "no netcdf_meta.h (package libnetcdf-dev:$DEBARCH, or libnetcdf-dev of the same version)"
    ncinc="$(dirname "$ncinc")"
    h5inc="$(first_of "$SYSROOT/usr/include/hdf5/serial/H5pubconf.h" /usr/include/hdf5/serial/H5pubconf.h)" ||
        die "no H5pubconf.h (package libhdf5-dev:$DEBARCH, or libhdf5-dev of the same version)"
    h5inc="$(dirname "$h5inc")"
    # hdf5-metno-sys loads libhdf5.so into its build script to check the version against the
    # headers: give it the host's library of that version, in a directory the linker also
    # searches but where the target's library comes first.
    hosth5="$(first_of "/usr/lib/$host_gnu/hdf5/serial/libhdf5.so" "/usr/lib/$host_gnu/libhdf5_serial.so")" ||
        die "no host libhdf5.so (package libhdf5-dev, for the build script's version check)"
    v1="$(sed -n 's/^#define H5_VERSION "\(.*\)"/\1/p' "$h5inc/H5pubconf.h")"
    v2="$(sed -n 's/^#define H5_VERSION "\(.*\)"/\1/p' /usr/include/hdf5/serial/H5pubconf.h 2>/dev/null || true)"
    [ "$v1" = "$v2" ] ||
        die "the target's HDF5 is $v1 but the host's is ${v2:-missing}; the build script needs the same version on both (package libhdf5-dev)"
    shim="$ROOT/target/deploy/sysroot/$DEBARCH/shim"
    rm -rf "$shim"
    mkdir -p "$shim/netcdf/lib" "$shim/hdf5/lib" "$shim/hdf5/bin"
    ln -s "$ncinc" "$shim/netcdf/include"
    ln -s "$nc" "$shim/netcdf/lib/libnetcdf.so"
    ln -s "$h5inc" "$shim/hdf5/include"
    ln -s "$h5" "$shim/hdf5/lib/libhdf5.so"
    ln -s "$hosth5" "$shim/hdf5/bin/libhdf5.so"
    # Given to the manager's cargo command only, never exported: a later host build must not see them.
    TARGET_LIB_ENV=("NETCDF_DIR=$shim/netcdf" "HDF5_DIR=$shim/hdf5")
    # The linker resolves libnetcdf's own libraries (HDF5) from the sysroot; those that are not
    # there (curl, libxml2, ...) the Pi's libnetcdf19 package brings, so do not insist here.
    LINK_ARGS=(-C "link-arg=-Wl,-rpath-link,$libdir" -C "link-arg=-Wl,-rpath-link,$libdir/hdf5/serial"
        -C "link-arg=-Wl,--allow-shlib-undefined")
    SMOKE_LIBS="$SYSROOT/lib/$GNU:$libdir:$libdir/hdf5/serial"
}
host_gnu="x86_64-linux-gnu"
case "$host_triple" in aarch64-*) host_gnu=aarch64-linux-gnu ;; esac

# Before any (long) build: the manager's target libraries are there, or fetched now.
if [ -z "$prebuilt" ] && [ "$with_manager" = 1 ]; then
    for f in "${flavours[@]}"; do
        flavour_info "$f"
        if is_cross; then prepare_target_libs; fi
    done
fi

# --- build ---------------------------------------------------------------------------------

declare -gA build_seconds

build_flavour() { # $1 = flavour; sets BIN_DIR, BUILT (names)
    local f="$1" tdir var flags link t0 t1 t2 cargo_common
    flavour_info "$f"
    tdir="$TARGET_BASE/deploy/$f"
    var="CARGO_TARGET_$(echo "$TRIPLE" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
    flags=()
    [ -n "$CPU" ] && flags+=(-C "target-cpu=$CPU")
    # Paths in panic messages: the registry and the target directory (build scripts' output),
    # not this machine's layout. The workspace's own paths are relative already (cargo compiles
    # members from the workspace root), so the checkout's path is in no flag: a clone elsewhere
    # (each CI run's) then reuses the dependencies built for an earlier one, and
    # check_no_checkout_path proves the binaries do not name it.
    flags+=("--remap-path-prefix=$TARGET_BASE=/target" "--remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo")
    # Link options go to the binaries only (`cargo rustc -- ...`), so changing them relinks
    # without rebuilding the dependencies. Pi flavours link with the toolchain's own lld, which
    # packs relative relocations (DT_RELR: 0.33 MB less than .rela.dyn in shoal-node; Debian
    # 12's GNU ld 2.40 cannot on aarch64). That needs glibc 2.36 (Debian 12, Raspberry Pi OS
    # bookworm); the binaries already need 2.35. x86_64 keeps the default so it runs on older
    # distributions.
    link=()
    if is_cross; then
        local gcc_ld
        gcc_ld="$(rustc --print sysroot)/lib/rustlib/$host_triple/bin/gcc-ld"
        if [ -x "$gcc_ld/ld.lld" ]; then
            link+=(-C "link-arg=-B$gcc_ld" -C "link-arg=-fuse-ld=lld" -C "link-arg=-Wl,-z,pack-relative-relocs")
        else
            echo "deploy/build.sh: warning: no $gcc_ld/ld.lld in this toolchain: linking with GNU ld, without packed relocations (0.3 MB bigger)" >&2
        fi
    fi
    RUSTFLAGS_USED="${flags[*]}"
    LINKFLAGS_USED="${link[*]}"
    cargo_common=(--profile deploy --target "$TRIPLE" --target-dir "$tdir" "${jobs[@]}")
    BUILT=(shoal-node)
    local manager=0
    if ! is_cross || [ "$with_manager" = 1 ]; then manager=1; BUILT+=(shoal); fi
    t0=$(date +%s)
    note "$f: shoal-node for $TRIPLE ${CPU:+(target-cpu $CPU) }in $tdir"
    env "$var=${flags[*]}" cargo rustc "${cargo_common[@]}" -p shoal-node --bin shoal-node -- "${link[@]}"
    t1=$(date +%s)
    build_seconds[$f:shoal-node]=$((t1 - t0))
    if [ "$manager" = 1 ]; then
        if is_cross; then
            prepare_target_libs
            note "$f: shoal (manager) against $SYSROOT's $DEBARCH NetCDF"
            env "$var=${flags[*]}" "${TARGET_LIB_ENV[@]}" \
                cargo rustc "${cargo_common[@]}" -p shoal-manager --bin shoal -- "${link[@]}" "${LINK_ARGS[@]}"
        else
            note "$f: shoal (manager)"
            env "$var=${flags[*]}" cargo rustc "${cargo_common[@]}" -p shoal-manager --bin shoal -- "${link[@]}"
        fi
    fi
    t2=$(date +%s)
    [ "$manager" = 1 ] && build_seconds[$f:shoal]=$((t2 - t1))
    build_seconds[$f]=$((t2 - t0))
    BIN_DIR="$tdir/$TRIPLE/deploy"
}

# --- smoke run -------------------------------------------------------------------------------

# Runs a binary of flavour $1 with the given arguments, under qemu with the flavour's own CPU
# model (so an instruction the core lacks fails here) when it is not this machine's.
run_target() {
    local f="$1" extra_env=()
    shift
    flavour_info "$f"
    if is_cross; then
        [ -n "${SMOKE_LIBS:-}" ] && extra_env=(-E "LD_LIBRARY_PATH=$SMOKE_LIBS")
        "$QEMU" -cpu "$CPU" -L "/usr/$GNU" "${extra_env[@]}" "$@"
    else
        "$@"
    fi
}

smoke_flavour() { # $1 = flavour, $2 = package bin dir
    local f="$1" bin="$2" outp
    flavour_info "$f"
    note "$f: smoke run${QEMU:+ under $QEMU -cpu $CPU}"
    outp="$(run_target "$f" "$bin/shoal-node" --help 2>&1)" ||
        die "$f: shoal-node --help failed: $outp"
    echo "    shoal-node --help: $(head -1 <<<"$outp")"
    outp="$(run_target "$f" "$bin/shoal-node" 2>&1)" ||
        die "$f: shoal-node (no arguments) failed: $outp"
    # "shoal-node 0.1.0 (git 1a2b3c4d5e) on aarch64 (4 cores)"
    local line="^shoal-node $version( \(git [0-9a-z]+\))? on "
    grep -qE "$line" <<<"$outp" ||
        die "$f: shoal-node printed no version line: $outp"
    grep -E "$line|^device: " <<<"$outp" | sed 's/^/    /'
    outp="$(run_target "$f" "$bin/shoal-node" --version 2>&1)" ||
        die "$f: shoal-node --version failed: $outp"
    grep -qE "^shoal-node $version \(git [0-9a-z]+\)$" <<<"$outp" ||
        die "$f: shoal-node --version printed \`$outp\`"
    echo "    shoal-node --version: $outp"
    if [ -f "$bin/shoal" ]; then
        if outp="$(run_target "$f" "$bin/shoal" --help 2>&1)"; then
            echo "    shoal --help: $(head -1 <<<"$outp")"
        elif is_cross && grep -q "error while loading shared libraries" <<<"$outp"; then
            # Links, but the libraries libnetcdf loads are not all in the sysroot.
            echo "    shoal --help: not run, the sysroot lacks a library libnetcdf loads: $(grep -o 'lib[^ ]*: cannot open' <<<"$outp" | head -1) (--fetch-sysroot brings them)"
        else
            die "$f: shoal --help failed: $outp"
        fi
    fi
}

# --- package ---------------------------------------------------------------------------------

summary=()
oversize=0

package_flavour() { # $1 = flavour, $2 = dir with binaries, $3... = binary names
    local f="$1" src="$2" name pkg size mb
    shift 2
    flavour_info "$f"
    name="shoal-$version-$f"
    pkg="$out/$name"
    rm -rf "$pkg" "$out/$name.tar.gz"
    mkdir -p "$pkg/bin"
    for b in "$@"; do
        [ -f "$src/$b" ] || die "$src/$b was not built"
        cp "$src/$b" "$pkg/bin/$b"
        chmod 0755 "$pkg/bin/$b"
    done
    (cd "$pkg" && sha256sum bin/*) >"$pkg/SHA256SUMS"
    {
        echo "package: $name"
        echo "version: $version"
        echo "flavour: $f"
        echo "target: $TRIPLE"
        echo "target-cpu: ${CPU:-none (baseline)}"
        if [ -n "$prebuilt" ]; then
            echo "build: prebuilt binaries packaged from $src (profile and flags as built there)"
        else
            echo "build: cargo --profile deploy (lto = fat, codegen-units = 1, opt-level 3 for the workspace and rayon, \"z\" for the other dependencies, strip, panic = unwind)"
            echo "rustflags: $RUSTFLAGS_USED" | sed "s#$TARGET_BASE#<target>#g; s#$ROOT#<workspace>#g; s#${CARGO_HOME:-$HOME/.cargo}#<cargo home>#g"
            echo "link: ${LINKFLAGS_USED:-default}" | sed "s#-B[^ ]*/gcc-ld#-B<rustc sysroot>/lib/rustlib/$host_triple/bin/gcc-ld#"
        fi
        echo "rustc: $rustc_version"
        echo "commit: $commit"
        echo "commit-time: $(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
        echo "features: shoal-node default (gpu: wgpu, Vulkan)$( [ -f "$pkg/bin/shoal" ] && echo "; shoal default (gpu)")"
        echo "binaries: $*"
        [ -f "$pkg/bin/shoal" ] && echo "runtime: shoal needs libnetcdf19 (Debian 12, Raspberry Pi OS bookworm: apt-get install libnetcdf19)"
        echo "runtime: shoal-node's GPU path needs a Vulkan driver (mesa-vulkan-drivers: v3dv on a Pi 4/5); without one it steps on the CPU"
    } >"$pkg/BUILDINFO"
    touch -h -d "@$epoch" "$pkg" "$pkg/bin" "$pkg"/bin/* "$pkg/SHA256SUMS" "$pkg/BUILDINFO"
    tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
        --mode='u+rwX,go+rX,go-w' --format=gnu -C "$out" -cf - "$name" |
        gzip -n -9 >"$out/$name.tar.gz"
    for b in "$@"; do
        size=$(stat -c %s "$pkg/bin/$b")
        mb=$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1e6 }')
        echo "    $f/bin/$b: $size bytes ($mb MB)"
        echo "      $(file -b "$pkg/bin/$b")"
        summary+=("$f|$b|$size|$mb|${build_seconds[$f:$b]:-prebuilt}")
        # Built binaries must not name the checkout's path (it is in no flag; see build_flavour).
        if [ -z "$prebuilt" ] && grep -qaF "$ROOT/" "$pkg/bin/$b"; then
            die "$f/bin/$b names the checkout's path $ROOT: $(grep -aoF "$ROOT/" "$pkg/bin/$b" | head -1)..."
        fi
        if [ "$b" = shoal-node ] && [ "$DEBARCH" = arm64 ] && [ "$size" -gt "$SIZE_LIMIT" ]; then
            echo "    $f/bin/shoal-node is over the 8 MB limit ($size > $SIZE_LIMIT bytes)" >&2
            oversize=1
        fi
    done
    if [ "$smoke" = 1 ]; then smoke_flavour "$f" "$pkg/bin"; fi
}

for f in "${flavours[@]}"; do
    SMOKE_LIBS=""
    if [ -n "$prebuilt" ]; then
        flavour_info "$f"
        bins=(shoal-node)
        [ -f "$prebuilt/shoal" ] && bins+=(shoal)
        for b in "${bins[@]}"; do
            case "$(file -b "$prebuilt/$b")" in
                *x86-64*) [ "$f" = x86_64 ] ;;
                *"ARM aarch64"*) [ "$DEBARCH" = arm64 ] ;;
                *"32-bit"*ARM*) [ "$f" = armv7 ] ;;
                *) false ;;
            esac || die "$prebuilt/$b is not a $f binary: $(file -b "$prebuilt/$b")"
        done
        note "$f: packaging prebuilt ${bins[*]} from $prebuilt"
        package_flavour "$f" "$prebuilt" "${bins[@]}"
    else
        build_flavour "$f"
        package_flavour "$f" "$BIN_DIR" "${BUILT[@]}"
    fi
done

# Checksums over this version's tarballs in <out>, whichever runs made them.
(cd "$out" && sha256sum shoal-"$version"-*.tar.gz) >"$out/SHA256SUMS"

echo
echo "flavour   binary       bytes        MB     build (s; the manager's after the node's)"
for row in "${summary[@]}"; do
    IFS='|' read -r f b size mb secs <<<"$row"
    printf '%-9s %-12s %-12s %-6s %s\n' "$f" "$b" "$size" "$mb" "$secs"
done
echo "packages in $out:"
(cd "$out" && ls -1 shoal-"$version"-*.tar.gz SHA256SUMS | sed 's/^/  /')

if [ "$check_size" = 1 ] && [ "$oversize" = 1 ]; then
    die "shoal-node for aarch64 is over 8 MB (8,000,000 bytes); see above"
fi

}

main "$@"; exit
