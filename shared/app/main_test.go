package app_test

import (
	"testing"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
)

// TestMain stops the embedded MongoDB the tests shared and removes its data.
func TestMain(m *testing.M) { testenv.Main(m) }
