//! The registry, the declarations it derives from, the config sections services parse, and
//! the drain signal, without a network.

use super::*;
use crate::config::Config;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// A service whose ALPN, scope and anonymity come from its fields and its config.
struct Test {
    alpn: &'static [u8],
}

#[derive(Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TestConfig {
    greeting: String,
    anonymous: bool,
}

struct Nop;

impl Handler for Nop {
    async fn handle(self: Rc<Self>, _conn: Connection, _auth: AuthContext) {}
}

impl Service for Test {
    const NAME: &'static str = "test";
    type Config = TestConfig;
    type Handler = Nop;
    fn info(&self, config: &TestConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: self.alpn,
            scopes: &["test"],
            anonymous: config.anonymous,
            uni_streams: false,
        }
    }
    fn build(&self, _ctx: &ServiceContext<'_, TestConfig>) -> Nop {
        Nop
    }
}

/// A second service, with no keys of its own.
struct Other;

impl Service for Other {
    const NAME: &'static str = "other";
    type Config = NoConfig;
    type Handler = Nop;
    fn info(&self, _: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: b"alknet/other",
            scopes: &[],
            anonymous: false,
            uni_streams: false,
        }
    }
    fn build(&self, _ctx: &ServiceContext<'_, NoConfig>) -> Nop {
        Nop
    }
}

fn offers() -> Vec<Offer> {
    vec![
        Offer::new(Test {
            alpn: b"alknet/test",
        }),
        Offer::new(Other),
    ]
}

fn from(text: &str) -> Result<Registry, SetupError> {
    let config = Config::parse(text, Path::new("alknet.toml"))
        .unwrap_or_else(|e| panic!("base config: {e}"));
    Registry::from_config(&config, offers())
}

fn error(text: &str) -> String {
    from(text).err().map(|e| e.to_string()).unwrap_or_default()
}

#[test]
fn duplicate_and_bad_alpns_are_start_up_errors() {
    let mut r = Registry::new();
    assert_eq!(
        r.register(Test { alpn: b"alknet/a" }, TestConfig::default()),
        Ok(())
    );
    assert_eq!(r.register(Other, NoConfig {}), Ok(()));
    assert_eq!(
        r.register(Test { alpn: b"alknet/a" }, TestConfig::default()),
        Err(RegistryError::DuplicateAlpn {
            alpn: "alknet/a".into(),
            first: "test",
            second: "test"
        })
    );
    assert!(matches!(
        r.register(Test { alpn: b"" }, TestConfig::default()),
        Err(RegistryError::BadAlpn {
            service: "test",
            ..
        })
    ));
    assert!(matches!(
        r.register(Test { alpn: &[b'x'; 256] }, TestConfig::default()),
        Err(RegistryError::BadAlpn { .. })
    ));
    assert_eq!(
        r.alpns(),
        vec![b"alknet/a".to_vec(), b"alknet/other".to_vec()]
    );
}

#[test]
fn tls_and_routing_read_the_one_declaration() {
    let mut r = Registry::new();
    r.register(Other, NoConfig {})
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!r.any_anonymous(), "client certificates are required");
    let anonymous = TestConfig {
        anonymous: true,
        ..TestConfig::default()
    };
    r.register(
        Test {
            alpn: b"alknet/test",
        },
        anonymous,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.any_anonymous(),
        "an anonymous service makes them optional"
    );
    let listed: Vec<_> = r.services().collect();
    assert_eq!(
        listed,
        vec![
            (
                "other",
                ServiceInfo {
                    alpn: b"alknet/other",
                    scopes: &[],
                    anonymous: false,
                    uni_streams: false,
                }
            ),
            (
                "test",
                ServiceInfo {
                    alpn: b"alknet/test",
                    scopes: &["test"],
                    anonymous: true,
                    uni_streams: false,
                }
            ),
        ]
    );
    // The router of a shard carries the same declarations.
    let node = Arc::new(NodeFacts::new(
        "ed25519:3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
        r.alpns(),
        Vec::new(),
        None,
    ));
    let setup = ShardSetup::new(
        0,
        Arc::new(crate::identity::MemoryIdentities::new()),
        node,
        Arc::default(),
    );
    let router = r.instantiate(&setup);
    assert_eq!(
        router.get(b"alknet/test").map(|r| r.info.scopes),
        Some(&["test"][..])
    );
    assert!(router.get(b"alknet/nope").is_none());
}

#[test]
fn service_keys_are_parsed_by_the_service() {
    let r = from(
        "[services.test]\nenabled = true\ngreeting = \"hello\"\nanonymous = true\n\n[services.other]\nenabled = false\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.alpns(), vec![b"alknet/test".to_vec()]);
    assert!(r.any_anonymous(), "anonymity follows the service's config");

    let config = Config::parse(
        "[services.test]\ngreeting = \"hi\"\nenabled = true\n",
        Path::new("alknet.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let section = config
        .service_section::<TestConfig>("test")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        section.enabled,
        Some(true),
        "`enabled` is read by the layer, after the service's keys"
    );
    assert_eq!(section.config.greeting, "hi");
    let absent = config
        .service_section::<NoConfig>("other")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        absent.enabled, None,
        "an absent section leaves it to the service"
    );
}

#[test]
fn unknown_service_key_names_file_line_and_key() {
    let msg = error("workers = 1\n[services.test]\nenabled = true\ngreting = \"hi\"\n");
    assert!(
        msg.starts_with("alknet.toml:4: key `services.test.greting`: unknown field `greting`"),
        "{msg}"
    );
    // Also in a section that is off, and in a service without keys of its own.
    let msg = error("[services.other]\nenabled = false\ncolour = 1\n");
    assert!(
        msg.starts_with("alknet.toml:3: key `services.other.colour`"),
        "{msg}"
    );
    let msg = error("[services.test]\ngreeting = 5\n");
    assert!(
        msg.starts_with("alknet.toml:2: key `services.test.greeting`"),
        "{msg}"
    );
    let msg = error("[services.test]\nenabled = \"yes\"\n");
    assert!(
        msg.starts_with("alknet.toml:2: key `services.test.enabled`"),
        "{msg}"
    );
}

#[test]
fn unknown_service_name_lists_the_known_ones() {
    let msg = error("listen = \"[::]:4433\"\n\n[services.tset]\nenabled = true\n");
    assert_eq!(
        msg,
        "alknet.toml:3: key `services.tset`: unknown service `tset`; the services of this build are: test, other"
    );
}

#[test]
fn config_built_in_code_is_parsed_too() {
    let mut config = Config::default();
    let mut table = toml::Table::new();
    table.insert("enabled".into(), toml::Value::Boolean(true));
    table.insert("greeting".into(), toml::Value::String("hey".into()));
    config.services.insert("test".into(), table);
    let section = config
        .service_section::<TestConfig>("test")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(section.enabled, Some(true));
    assert_eq!(section.config.greeting, "hey");
    config
        .services
        .get_mut("test")
        .map(|t| t.insert("nope".into(), toml::Value::Boolean(true)));
    assert!(config.service_section::<TestConfig>("test").is_err());
}

#[derive(Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn drain_wakes_its_waiters_once_and_forgets_dropped_ones() {
    let drain = Drain::new();
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);

    let mut first = std::pin::pin!(drain.wait());
    let mut second = Box::pin(drain.wait());
    assert!(!drain.is_draining());
    for _ in 0..3 {
        // Polling again replaces the waker; it does not pile up.
        assert_eq!(first.as_mut().poll(&mut cx), Poll::Pending);
    }
    assert_eq!(second.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(drain.waiting(), 2);
    drop(second);
    assert_eq!(
        drain.waiting(),
        1,
        "a cancelled wait leaves no waker behind"
    );

    drain.clone().fire();
    assert!(drain.is_draining());
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    assert_eq!(first.as_mut().poll(&mut cx), Poll::Ready(()));
    drain.fire();
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "fired once");
    // A wait that starts after the signal completes at once.
    assert_eq!(std::pin::pin!(drain.wait()).poll(&mut cx), Poll::Ready(()));
    assert_eq!(drain.waiting(), 0);
}

#[test]
fn router_drain_fires_the_shards_signal() {
    let setup = ShardSetup::new(
        3,
        Arc::new(crate::identity::MemoryIdentities::new()),
        Arc::new(NodeFacts::new(
            "ed25519:3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            Vec::new(),
            Vec::new(),
            None,
        )),
        Arc::default(),
    );
    let watch = ConfigWatch::new(NoConfig {});
    let ctx = ServiceContext::new(&setup, &NoConfig {}, &watch);
    assert_eq!(ctx.shard(), 3);
    let drain = ctx.drain();
    let router = Registry::new().instantiate(&setup);
    assert!(!drain.is_draining());
    router.drain();
    assert!(
        drain.is_draining(),
        "the handler's copy sees the shard's signal"
    );
    assert!(matches!(ctx.node().peers(), Err(NodeError::Unavailable(_))));
}

#[test]
fn every_shard_context_shares_the_nodes_tokio_runtime_unstarted() {
    let rt = Arc::new(crate::service::tokio_rt::SideRuntime::default());
    let node = Arc::new(NodeFacts::new(
        "ed25519:3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
        Vec::new(),
        Vec::new(),
        None,
    ));
    let setups: Vec<ShardSetup> = (0..2)
        .map(|i| {
            ShardSetup::new(
                i,
                Arc::new(crate::identity::MemoryIdentities::new()),
                node.clone(),
                Arc::default(),
            )
            .with_tokio(rt.clone())
        })
        .collect();
    let watch = ConfigWatch::new(NoConfig {});
    for setup in &setups {
        let ctx = ServiceContext::new(setup, &NoConfig {}, &watch);
        assert!(Arc::ptr_eq(ctx.tokio(), &rt), "shard {}", ctx.shard());
    }
    assert!(!rt.is_started(), "building services starts no tokio thread");
    // Without the node's runtime a context still has one, of its own.
    let lone = ShardSetup::new(
        0,
        Arc::new(crate::identity::MemoryIdentities::new()),
        node,
        Arc::default(),
    );
    assert!(!Arc::ptr_eq(
        ServiceContext::new(&lone, &NoConfig {}, &watch).tokio(),
        &rt
    ));
}

#[test]
fn authenticated_services_are_on_unless_turned_off_and_anonymous_modes_off_unless_on() {
    // No config at all, and a config file that does not mention the services: one rule.
    let none =
        Registry::from_config(&Config::default(), offers()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        none.alpns(),
        vec![b"alknet/test".to_vec(), b"alknet/other".to_vec()]
    );
    let file = from("workers = 1\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.alpns(), none.alpns());
    assert!(!file.any_anonymous());
    // Each can be turned off.
    let r = from("[services.other]\nenabled = false\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.alpns(), vec![b"alknet/test".to_vec()]);
    // An anonymous mode set without `enabled` stays off; with it, it is on.
    let r = from("[services.test]\nanonymous = true\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.alpns(), vec![b"alknet/other".to_vec()]);
    let r = from("[services.test]\nanonymous = true\nenabled = true\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.any_anonymous());
}

/// An anonymous service that admits nothing by itself and wants a key: on by default,
/// certificates stay required.
struct Door;

impl Service for Door {
    const NAME: &'static str = "door";
    type Config = NoConfig;
    type Handler = Nop;
    fn info(&self, _: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: b"alknet/door",
            scopes: &[],
            anonymous: true,
            uni_streams: false,
        }
    }
    fn build(&self, _ctx: &ServiceContext<'_, NoConfig>) -> Nop {
        Nop
    }
    fn enabled_by_default(&self, _: &NoConfig) -> bool {
        true
    }
    fn requires_client_key(&self, _: &NoConfig) -> bool {
        true
    }
}

#[test]
fn a_key_requiring_anonymous_service_keeps_certificates_required() {
    let r = Registry::from_config(
        &Config::default(),
        vec![Offer::new(Door), Offer::new(Other)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.alpns().len(), 2);
    assert!(!r.any_anonymous(), "client certificates stay required");
}

/// A service that hands the config watch its shard's handler got to the test.
struct Watching {
    seen: Arc<std::sync::Mutex<Option<ConfigWatch<TestConfig>>>>,
}

impl Service for Watching {
    const NAME: &'static str = "test";
    type Config = TestConfig;
    type Handler = Nop;
    fn info(&self, config: &TestConfig) -> ServiceInfo {
        Test {
            alpn: b"alknet/test",
        }
        .info(config)
    }
    fn build(&self, ctx: &ServiceContext<'_, TestConfig>) -> Nop {
        if let Ok(mut slot) = self.seen.lock() {
            *slot = Some(ctx.config_watch());
        }
        Nop
    }
}

fn parsed(text: &str) -> Config {
    Config::parse(text, Path::new("alknet.toml")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_reload_plan_switches_services_and_stores_sections_only_on_commit() {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let running_offers = || {
        vec![
            Offer::new(Watching { seen: seen.clone() }),
            Offer::new(Other),
        ]
    };
    let old = parsed("[services.test]\ngreeting = \"hi\"\n[services.other]\nenabled = false\n");
    let registry = Registry::from_config(&old, running_offers()).unwrap_or_else(|e| panic!("{e}"));
    let setup = ShardSetup::new(
        0,
        Arc::new(crate::identity::MemoryIdentities::new()),
        Arc::new(NodeFacts::new(
            "ed25519:3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            Vec::new(),
            Vec::new(),
            None,
        )),
        Arc::default(),
    );
    let mut router = registry.instantiate(&setup);
    let watch = seen
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .unwrap_or_else(|| panic!("the service was not built"));
    assert_eq!(watch.current().greeting, "hi");
    assert_eq!(watch.version(), 0);

    // A new greeting, and `other` turned on: it was not built at start, so it needs a
    // restart; the section is stored only on commit.
    let new = parsed("[services.test]\ngreeting = \"hello\"\n[services.other]\nenabled = true\n");
    let plan = registry
        .plan_reload(&old, &new, running_offers())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.sections, ["test"]);
    assert_eq!(plan.need_restart, ["other"]);
    assert!(plan.disabled.is_empty(), "{plan:?}");
    assert_eq!(watch.current().greeting, "hi", "stored before the commit");
    plan.commit();
    assert_eq!(watch.current().greeting, "hello");
    assert_eq!(watch.version(), 1);

    // A typo in the new file: an error naming file, line and key, and nothing stored.
    let bad = parsed("[services.test]\ngreting = \"x\"\n");
    let e = registry
        .plan_reload(&new, &bad, running_offers())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with("alknet.toml:2: key `services.test.greting`"),
        "{e}"
    );
    assert_eq!(watch.current().greeting, "hello");

    // Turning the service off names it and its ALPN, which the router then refuses.
    let off = parsed("[services.test]\nenabled = false\n");
    let plan = registry
        .plan_reload(&new, &off, running_offers())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.disabled, ["test"]);
    assert_eq!(plan.disabled_alpns, [b"alknet/test".to_vec()]);
    assert!(router.get(b"alknet/test").is_some());
    router.set_disabled(plan.disabled_alpns.clone());
    assert!(router.get(b"alknet/test").is_none());
    assert!(router.is_disabled(b"alknet/test"));
    router.set_disabled(Vec::new());
    assert!(router.get(b"alknet/test").is_some());

    // A section that changes what the service declares (anonymity) waits for a restart.
    let anon = parsed("[services.test]\ngreeting = \"hi\"\nanonymous = true\nenabled = true\n");
    let plan = registry
        .plan_reload(&new, &anon, running_offers())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.declaration_changed, ["test"]);
    assert!(plan.sections.is_empty());
    plan.commit();
    assert_eq!(
        watch.current().greeting,
        "hello",
        "a declaration change is not stored"
    );
}
