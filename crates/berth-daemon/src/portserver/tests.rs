use super::*;

#[test]
fn addresses_parse_and_print_back() {
    let a: Address = "@unittest-portserver".parse().unwrap();
    assert_eq!(a, Address::Abstract("unittest-portserver".into()));
    assert_eq!(a.to_string(), DEFAULT_ADDRESS);
    let p: Address = "/run/portserver.sock".parse().unwrap();
    assert_eq!(p, Address::Path("/run/portserver.sock".into()));
    assert!("@".parse::<Address>().is_err());
    assert!("".parse::<Address>().is_err());
    assert!("x".repeat(200).parse::<Address>().is_err());
}
