pub mod ocsp;
