//! Who a certificate belongs to: the identity parsed once per connection, and the partner index
//! built once per configuration.

mod index;
mod peer;

pub use index::{PartnerIndex, PartnerMatch};
pub use peer::{IdentityError, PeerIdentity};
