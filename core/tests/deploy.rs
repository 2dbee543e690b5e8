//! The shipped example configuration must parse and document the real defaults.

use alknet_core::config::Config;

#[test]
fn example_config_matches_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alknet.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let d = Config::default();
    assert_eq!(format!("{:?}", c.transport), format!("{:?}", d.transport));
    assert_eq!(format!("{:?}", c.udp), format!("{:?}", d.udp));
    assert_eq!(c.listen, d.listen);
    assert_eq!(c.workers, d.workers);
    assert_eq!(c.drain_period, d.drain_period);
    assert_eq!(c.memory_budget, d.memory_budget);
    assert_eq!(c.driver, d.driver);
    // Authenticated services are on by default, and the example says so.
    assert!(c.service_enabled("echo"));
}
