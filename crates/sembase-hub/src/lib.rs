//! sembase-hub: model sources and the store.
