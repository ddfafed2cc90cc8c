//! Who a certificate belongs to: the identity parsed once per connection, and the partner index
//! built once per configuration.

mod dn;
mod index;
mod peer;

pub use dn::rfc4514;

pub use index::{PartnerIndex, PartnerMatch};
pub use peer::{IdentityError, PeerIdentity};
