//! TCP through the socket load balancer: IPv4, IPv6 and v4-mapped.

use socklb_integration::{Programmer, Sandbox, Svc, require_root};

#[test]
fn ipv4_connect_to_a_vip_reaches_a_backend() {
    require_root!();
    let sb = Sandbox::new("v4").expect("sandbox");
    sb.add_addrs(&["10.244.0.1/32"]).expect("addrs");
    sb.serve(&["10.244.0.1:8080".parse().unwrap()], &[], &[]).expect("serve");
    sb.install().expect("install");
    let mut p = Programmer::open(&sb.bpffs).expect("maps");
    p.set(&[Svc::tcp(1, "10.96.0.10:80", &["10.244.0.1:8080"])]).expect("program");

    let attempts = sb.connect("10.96.0.10:80".parse().unwrap(), 3);
    for a in &attempts {
        assert!(a.ok, "{a:?}");
        assert_eq!(a.backend.as_deref(), Some("10.244.0.1:8080"));
        assert_eq!(a.peer.as_deref(), Some("10.96.0.10:80"));
    }
}
