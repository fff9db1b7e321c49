//! The GPU path on a real Vulkan driver (Mesa's lavapipe in CI): VideoCore limits, the self-test
//! against the CPU kernel, agreement on analytic flows, determinism. With SHOAL_REQUIRE_GPU set,
//! a missing adapter fails these tests instead of skipping them.

use shoal_node::gpu::selftest::{self_test, SELF_TEST_TOLERANCE_M};
use shoal_node::gpu::GpuContext;
use std::sync::{Arc, OnceLock};

pub fn context() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();
    match CTX.get_or_init(GpuContext::new) {
        Ok(c) => Some(c.clone()),
        Err(e) => {
            assert!(
                std::env::var_os("SHOAL_REQUIRE_GPU").is_none(),
                "SHOAL_REQUIRE_GPU is set but: {e}"
            );
            eprintln!("skipped: no GPU ({e})");
            None
        }
    }
}

#[test]
fn self_test_passes_against_the_cpu_kernel() {
    let Some(ctx) = context() else { return };
    let r = self_test(&ctx).unwrap();
    eprintln!("self-test on {}: {r:?}", ctx.describe());
    assert!(r.passed(), "{r:?} (tolerance {SELF_TEST_TOLERANCE_M} m)");
    assert!(
        r.exited > 0,
        "the reference problem should exercise the open boundary"
    );
}
